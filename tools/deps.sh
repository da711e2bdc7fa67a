#!/usr/bin/env bash
# deps.sh - install the Debian packages tally needs to build, test and run.
# Fast on a ready machine: apt-get runs only when dpkg-query says a package is missing.
set -euo pipefail

pkgs=(build-essential cmake pkg-config libnng-dev libnanomsg-dev libxxhash-dev
	libjemalloc-dev libpq-dev libcriterion-dev postgresql postgresql-client
	procps iproute2 ca-certificates clang-format)

missing=()
for p in "${pkgs[@]}"; do
	status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
	case "$status" in
	*" ok installed") ;;
	*) missing+=("$p") ;;
	esac
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "deps: all ${#pkgs[@]} packages already installed"
	exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		sudo=(sudo)
	else
		echo "deps: missing packages: ${missing[*]}" >&2
		echo "deps: not root and sudo is not available; install them as root" >&2
		exit 1
	fi
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
	apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "deps: done"
