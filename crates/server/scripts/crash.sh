#!/usr/bin/env bash
# Manual crash check: kill -9 `gantry serve` repeatedly during a stream of submissions, restart
# it on the same data dir, and check that every acknowledged job is still there and no GPU is
# held by two jobs. Usage: crash.sh [kills] (needs a built target/…/gantry in $G).
set -u
G=${G:-target/debug/gantry}
KILLS=${1:-10}
DIR=$(mktemp -d)
PORT=${PORT:-7181}
export GANTRY_SERVER=127.0.0.1:$PORT
start() { "$G" serve --data-dir "$DIR/data" --listen "127.0.0.1:$PORT" --fake-gpus 8xH100-80GB >>"$DIR/serve.log" 2>&1 & SERVER=$!; sleep 0.7; }
start
n=0
for k in $(seq 1 "$KILLS"); do
  end=$((SECONDS + 1))
  while [ $SECONDS -lt $end ]; do
    n=$((n + 1))
    printf 'name: j%s\nqueue: default\ntasks: [{count: 1, gpus: 1}]\ncommand: [sleep, "30"]\n' "$n" >"$DIR/job.yaml"
    if "$G" submit "$DIR/job.yaml" >/dev/null 2>&1; then echo "j$n" >>"$DIR/acked"; fi &
    sleep 0.01
  done
  kill -9 "$SERVER"; wait "$SERVER" 2>/dev/null
  wait
  start
done
sleep 1
"$G" jobs -o json >"$DIR/jobs.json"
acked=$(wc -l <"$DIR/acked")
missing=$(python3 - "$DIR" <<'PY'
import json, sys
d = sys.argv[1]
have = {j["name"] for j in json.load(open(d + "/jobs.json"))}
print(sum(1 for l in open(d + "/acked") if l.strip() not in have))
PY
)
"$G" jobs --state running -o json >"$DIR/running.json"
running=$(python3 -c "import json,sys; print(len(json.load(open('$DIR/running.json'))))")
kill "$SERVER"
echo "kills: $KILLS, acknowledged: $acked, missing after restarts: $missing, running jobs: $running (8 GPUs)"
