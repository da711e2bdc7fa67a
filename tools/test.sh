#!/usr/bin/env bash
# test.sh - install dependencies, build everything (Release) into ./build and run the whole test
# suite: unit tests first, then integration tests. Exits with ctest's status.
# Works as root on a fresh Debian 12 (that is how CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTALLY_TESTS=ON
cmake --build build -j"$jobs"

rc=0
echo "== unit tests"
ctest --test-dir build --output-on-failure --timeout 600 -j2 -L unit || rc=$?
echo "== integration and other tests"
ctest --test-dir build --output-on-failure --timeout 600 -j2 -LE unit || { r=$?; [ "$rc" -ne 0 ] || rc=$r; }
if [ "$rc" -eq 0 ]; then
	echo "== all tests passed"
else
	echo "== some tests failed (status $rc)"
fi
exit "$rc"
