#!/bin/bash
# 1 process with 2 threads vs 2 shard processes with 1 thread each (then `merge`), same machine,
# alternating, wall times by /usr/bin/time; checks that both give the same manifest and files.
# Usage: scripts/bench-shards.sh DATA_DIR [RUNS]   (e.g. ../shared/fixtures/diaretdb1-train12 3)
set -euo pipefail
DATA=$(realpath "$1"); RUNS=${2:-3}
P=$(realpath target/release/pipeline)
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
cd "$W"
echo "{\"name\":\"t\",\"data\":\"$DATA\",\"out\":\"one\"}" > one.json
echo "{\"name\":\"t\",\"data\":\"$DATA\",\"out\":\"sh\"}" > sh.json
T=/usr/bin/time
for i in $(seq "$RUNS"); do
  echo "== run $i"; uptime
  rm -rf one
  $T -f "one process: wall %e s cpu %U+%S s maxrss %M KB" "$P" generate --config one.json --threads 2 2>&1 | tail -2
  uptime; rm -rf sh
  $T -f "2 shards + merge: wall %e s" bash -c "
    $T -f 'shard 0/2: wall %e s cpu %U+%S s maxrss %M KB' $P generate --config sh.json --threads 1 --shard 0/2 >/dev/null &
    $T -f 'shard 1/2: wall %e s cpu %U+%S s maxrss %M KB' $P generate --config sh.json --threads 1 --shard 1/2 >/dev/null &
    wait
    $T -f 'merge: wall %e s cpu %U+%S s maxrss %M KB' $P merge --config sh.json" 2>&1 | tail -5
  cmp one/t/manifest.json sh/t/manifest.json && diff -r -q one/t/master sh/t/master && echo "same manifest.json and master/"
  for k in 0 1; do
    python3 -c "import json; print('shard $k/2 sources:', len(json.load(open('sh/t/shards/$k-of-2/manifest.json'))['sources']))"
  done
done
uptime
