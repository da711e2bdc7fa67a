#!/usr/bin/env bash
# fault-soak.sh - run the fault engine (tests/harness/faults.c) for a long time.
#
# With --replicas 0 (the default) it runs the `durability/soak` test of integ_durability:
# four clients ingest through every node while random nodes (workers, the coordinator, the
# node a client is on) are killed with SIGKILL and restarted, one at a time, on 3 workers.
# With --replicas N >= 1 it runs `failover/soak` of integ_failover: views with
# num_replicas = N on W workers; each round takes 1..K workers down at once at random
# moments (kill -9, or SIGSTOP for a hung node in P% of the rounds), checks during the
# outage that reads (primary_only = off) and writes (sync_receive) succeed at a live node,
# then brings them back. Every R rounds the clients stop, the cluster settles (outboxes
# empty; with replicas also replication lag 0 and no hints) and every statement and every
# view at every node is checked exactly against a PostgreSQL oracle.
#
#   tools/fault-soak.sh [--minutes M] [--seed S] [--rounds R] [--max-down-ms D]
#                       [--replicas N] [--workers W] [--max-down K] [--sigstop-pct P]
#                       [--build DIR]
#
# M defaults to 60 (at most 1440), R to 20, D (how long a victim stays down, at most) to
# 1000, DIR to ./build. N defaults to 0 (1..8); W to N + 2 (at least N + 1, at most 15);
# K to N (1..W; more than N makes reads fail by design); P to 20 (0..100). W, K and P need
# N >= 1. Reproduce a run's choices with --seed.
#
# Prints every check's summary line (rounds, faults by kind, statements and events
# acknowledged, lost, doubled, partial, mismatching rows, outage errors) and a final summary,
# and exits non-zero on any lost, doubled or partial statement, mismatching view row, failed
# outage read or write, client error at a live node, or other error.
set -euo pipefail

minutes=60
seed=""
rounds=""
maxdown=""
replicas=0
workers=""
maxdownk=""
sigstop=""
build="build"

usage() {
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
	exit "${1:-2}"
}

while [ $# -gt 0 ]; do
	case "$1" in
	--minutes) minutes="${2:?--minutes needs a value}"; shift 2 ;;
	--seed) seed="${2:?--seed needs a value}"; shift 2 ;;
	--rounds) rounds="${2:?--rounds needs a value}"; shift 2 ;;
	--max-down-ms) maxdown="${2:?--max-down-ms needs a value}"; shift 2 ;;
	--replicas) replicas="${2:?--replicas needs a value}"; shift 2 ;;
	--workers) workers="${2:?--workers needs a value}"; shift 2 ;;
	--max-down) maxdownk="${2:?--max-down needs a value}"; shift 2 ;;
	--sigstop-pct) sigstop="${2:?--sigstop-pct needs a value}"; shift 2 ;;
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

if ! [[ "$replicas" =~ ^[0-9]+$ ]] || [ "$replicas" -gt 8 ]; then
	echo "fault-soak: --replicas must be an integer in [0, 8], got '$replicas'" >&2
	exit 2
fi
if [ "$replicas" -eq 0 ] && [ -n "$workers$maxdownk$sigstop" ]; then
	echo "fault-soak: --workers, --max-down and --sigstop-pct need --replicas >= 1" >&2
	exit 2
fi
if [ "$replicas" -ge 1 ]; then
	workers="${workers:-$((replicas + 2))}"
	if ! [[ "$workers" =~ ^[0-9]+$ ]] || [ "$workers" -le "$replicas" ] || [ "$workers" -gt 15 ]; then
		echo "fault-soak: --workers must be an integer in [$((replicas + 1)), 15], got '$workers'" >&2
		exit 2
	fi
	maxdownk="${maxdownk:-$replicas}"
	if ! [[ "$maxdownk" =~ ^[0-9]+$ ]] || [ "$maxdownk" -lt 1 ] || [ "$maxdownk" -gt "$workers" ]; then
		echo "fault-soak: --max-down must be an integer in [1, $workers], got '$maxdownk'" >&2
		exit 2
	fi
	if [ "$maxdownk" -gt "$replicas" ]; then
		echo "fault-soak: warning: --max-down $maxdownk > --replicas $replicas: reads during outages will fail" >&2
	fi
	sigstop="${sigstop:-20}"
	if ! [[ "$sigstop" =~ ^[0-9]+$ ]] || [ "$sigstop" -gt 100 ]; then
		echo "fault-soak: --sigstop-pct must be an integer in [0, 100], got '$sigstop'" >&2
		exit 2
	fi
	target=integ_failover
	filter='failover/soak'
else
	target=integ_durability
	filter='durability/soak'
fi

bin="$build/tests/$target"
if [ ! -x "$bin" ]; then
	echo "fault-soak: $bin not found; build it first:" >&2
	echo "  make -C $build $target tally-worker tally-coordinator tallyctl" >&2
	exit 2
fi
# (the binary starts the tally-worker/tally-coordinator of the build it belongs to, or those
# in $TALLY_TEST_BIN_DIR when set)
export TALLY_FAULT_MINUTES="$minutes"
[ -n "$seed" ] && export TALLY_FAULT_SEED="$seed"
[ -n "$rounds" ] && export TALLY_FAULT_ROUNDS="$rounds"
[ -n "$maxdown" ] && export TALLY_FAULT_MAX_DOWN_MS="$maxdown"
if [ "$replicas" -ge 1 ]; then
	export TALLY_FAULT_REPLICAS="$replicas" TALLY_FAULT_WORKERS="$workers"
	export TALLY_FAULT_MAX_DOWN="$maxdownk" TALLY_FAULT_SIGSTOP_PCT="$sigstop"
fi

log="$(mktemp "${TMPDIR:-/tmp}/fault-soak.XXXXXX.log")"
if [ "$replicas" -ge 1 ]; then
	echo "fault-soak: $minutes minutes, num_replicas $replicas, $workers workers, up to $maxdownk down, SIGSTOP in $sigstop% of rounds${seed:+, seed $seed}; full log: $log"
else
	echo "fault-soak: $minutes minutes${seed:+, seed $seed}; full log: $log"
fi
start=$(date +%s)
set +e
# summary and per-round lines on the terminal, everything in the log
"$bin" --jobs 1 --verbose --filter "$filter" 2>&1 | tee "$log" |
	grep --line-buffered -E '^(faults: (seed=|round |outage: [^a])|durability: seed|failover: [0-9]|\[(FAIL|PASS|SKIP|----)\])'
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
field() { sed -n "s/.*[ (]$1=\([0-9.]*\).*/\1/p" <<<"$summary"; }
echo "fault-soak: summary: checks $(field checks), rounds $(field rounds); faults: worker" \
	"$(field worker), origin $(field origin), coordinator $(field coordinator), SIGSTOP" \
	"$(field sigstopped), rounds with several down $(field multi_down)"
echo "fault-soak: summary: statements acknowledged $(field acked), failed $(field failed)" \
	"(applied in full $(field failed_applied)); events acknowledged $(field events_acked)"
echo "fault-soak: summary: lost $(field lost), doubled $(field doubled), partial" \
	"$(field partial), phantom $(field phantom), mismatching rows $(field mismatching_rows)"
if [ "$replicas" -ge 1 ]; then
	echo "fault-soak: summary: outages $(field outages); failed there: reads" \
		"$(field outage_read_errors), writes $(field outage_write_errors), client" \
		"statements on a victim $(field outage_client_errors_origin) / at a live node" \
		"$(field outage_client_errors_other); slowest outage read $(field outage_read_max_ms) ms," \
		"slowest detection $(field detect_max_ms) ms"
fi
clean=1
for f in lost doubled partial phantom mismatching_rows read_errors settle_timeouts client_errors \
	detect_timeouts outage_read_errors outage_write_errors outage_client_errors_other; do
	v="$(field "$f")"
	if [ "${v:-x}" != 0 ]; then
		echo "fault-soak: problem: $f=${v:-missing}" >&2
		clean=0
	fi
done
if [ "$rc" -ne 0 ] || [ "$clean" -ne 1 ]; then
	echo "fault-soak: FAIL (log: $log)" >&2
	exit 1
fi
echo "fault-soak: OK"
