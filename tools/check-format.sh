#!/usr/bin/env bash
# check-format.sh - fail when a C source or header differs from the layout .clang-format gives
# it (STYLE.md: the format check runs in CI). Fix with: clang-format -i FILE.
# Generated files (common/types/float_tables.h) are left out.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang-format >/dev/null 2>&1; then
	echo "check-format: clang-format is not installed (tools/deps.sh installs it)" >&2
	exit 1
fi
bad=0
while IFS= read -r f; do
	if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
		echo "check-format: $f is not formatted (clang-format -i $f)"
		bad=1
	fi
done < <(find include common coordinator worker tools tests -name '*.[ch]' ! -name float_tables.h | sort)
[ "$bad" -eq 0 ] && echo "check-format: every C file is formatted"
exit "$bad"
