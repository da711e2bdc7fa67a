#!/usr/bin/env bash
# quickstart.sh - install dependencies, build the binaries (Release) into ./build and start a
# local cluster (one coordinator, three workers) in ./tally-data with tallyctl.
# Stop it with: build/tallyctl down
set -euo pipefail
cd "$(dirname "$0")/.."

data=tally-data
if [ -x build/tallyctl ] && [ -f "$data/cluster.conf" ] &&
	build/tallyctl status --dir "$data" >/dev/null 2>&1; then
	echo "A tally cluster is already running in ./$data:"
	build/tallyctl status --dir "$data" || true
	echo
	echo "Connect with:  psql \"host=127.0.0.1 port=6432 user=tally dbname=tally\""
	echo "Stop it with:  build/tallyctl down"
	exit 0
fi

bash tools/deps.sh

jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs" --target tally-coordinator tally-worker tallyctl tally-bench

build/tallyctl up --dir "$data"

cat <<'MSG'

tally is running: a coordinator on port 6432 and workers w1..w3 on ports 6433..6435.
Every node speaks the PostgreSQL protocol. Connect with:

    psql "host=127.0.0.1 port=6432 user=tally dbname=tally"

A first session:

    CREATE STREAM clicks (page integer, ms double precision);
    CREATE CONTINUOUS VIEW per_page AS SELECT page, count(*), avg(ms) FROM clicks GROUP BY page;
    INSERT INTO clicks VALUES (1, 12.5), (1, 7.5), (2, 30);
    SELECT * FROM per_page ORDER BY page;
    SELECT * FROM pipeline_cluster.shards;

Status: build/tallyctl status      Stop: build/tallyctl down
MSG
