#!/usr/bin/env bash
# fault-soak.sh - run the kill -9 durability engine for a long time.
#
# Runs the `durability/soak` test of the built integ_durability binary: four clients ingest
# through every node while random nodes (workers, the coordinator, the node a client is on)
# are killed with SIGKILL and restarted; every TALLY_FAULT_ROUNDS rounds (default 20) the
# clients stop, the cluster settles and every statement and view is checked exactly against
# a PostgreSQL oracle. Prints the summary line of every check and exits non-zero on any lost,
# doubled or partial statement, mismatching view row or error.
#
#   tools/fault-soak.sh [--minutes M] [--seed S] [--rounds R] [--max-down-ms D] [--build DIR]
#
# M defaults to 60 (at most 1440), R to 20, D (how long a victim stays down, at most) to
# 1000, DIR to ./build. Reproduce a run's choices with --seed.
set -euo pipefail

minutes=60
seed=""
rounds=""
maxdown=""
build="build"

usage() {
	sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-2}"
}

while [ $# -gt 0 ]; do
	case "$1" in
	--minutes) minutes="${2:?--minutes needs a value}"; shift 2 ;;
	--seed) seed="${2:?--seed needs a value}"; shift 2 ;;
	--rounds) rounds="${2:?--rounds needs a value}"; shift 2 ;;
	--max-down-ms) maxdown="${2:?--max-down-ms needs a value}"; shift 2 ;;
	--build) build="${2:?--build needs a value}"; shift 2 ;;
	-h | --help) usage 0 ;;
	*) echo "fault-soak: unknown argument: $1" >&2; usage 2 ;;
	esac
done

if ! [[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || ! awk -v m="$minutes" 'BEGIN { exit !(m > 0 && m <= 1440) }'; then
	echo "fault-soak: --minutes must be a number in (0, 1440], got '$minutes'" >&2
	exit 2
fi
if [ -n "$seed" ] && ! [[ "$seed" =~ ^[0-9]+$ ]]; then
	echo "fault-soak: --seed must be a non-negative integer, got '$seed'" >&2
	exit 2
fi
if [ -n "$rounds" ] && ! [[ "$rounds" =~ ^[0-9]+$ ]]; then
	echo "fault-soak: --rounds must be a positive integer, got '$rounds'" >&2
	exit 2
fi

if [ -n "$maxdown" ] && ! [[ "$maxdown" =~ ^[0-9]+$ ]]; then
	echo "fault-soak: --max-down-ms must be a positive integer, got '$maxdown'" >&2
	exit 2
fi

bin="$build/tests/integ_durability"
if [ ! -x "$bin" ]; then
	echo "fault-soak: $bin not found; build it first:" >&2
	echo "  make -C $build integ_durability tally-worker tally-coordinator tallyctl" >&2
	exit 2
fi
# (the binary starts the tally-worker/tally-coordinator of the build it belongs to, or those
# in $TALLY_TEST_BIN_DIR when set)
export TALLY_FAULT_MINUTES="$minutes"
[ -n "$seed" ] && export TALLY_FAULT_SEED="$seed"
[ -n "$rounds" ] && export TALLY_FAULT_ROUNDS="$rounds"
[ -n "$maxdown" ] && export TALLY_FAULT_MAX_DOWN_MS="$maxdown"

log="$(mktemp "${TMPDIR:-/tmp}/fault-soak.XXXXXX.log")"
echo "fault-soak: $minutes minutes${seed:+, seed $seed}; full log: $log"
start=$(date +%s)
set +e
# summary and per-round lines on the terminal, everything in the log
"$bin" --jobs 1 --verbose --filter 'durability/soak' 2>&1 | tee "$log" |
	grep --line-buffered -E '^(faults: (seed=|round )|durability: seed|\[(FAIL|PASS|SKIP|----)\])'
rc=${PIPESTATUS[0]}
set -e
elapsed=$(($(date +%s) - start))

summary="$(grep '^faults: seed=' "$log" | tail -n 1 || true)"
echo
echo "fault-soak: finished after ${elapsed}s, exit status $rc"
if [ -z "$summary" ]; then
	echo "fault-soak: FAIL: no summary line (the run aborted; see $log)" >&2
	exit 1
fi
echo "$summary"
clean=1
for field in lost doubled partial phantom mismatching_rows read_errors settle_timeouts client_errors; do
	v="$(sed -n "s/.* $field=\([0-9]*\).*/\1/p" <<<"$summary")"
	if [ "${v:-x}" != 0 ]; then
		clean=0
	fi
done
if [ "$rc" -ne 0 ] || [ "$clean" -ne 1 ]; then
	echo "fault-soak: FAIL (log: $log)" >&2
	exit 1
fi
echo "fault-soak: OK"
