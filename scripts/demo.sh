#!/usr/bin/env bash
# `make demo`: the whole logdist pipeline on this machine, end to end.
#
# Builds release binaries, starts nats-server (nats.conf), one distributor and three analyzers
# (weights 0.5 / 0.3 / 0.2), sends load with agent-sim, then shows membership at work: analyzer 3
# withdraws in the middle of a run and a fourth analyzer joins in the middle of the next, and the
# share tables after each phase follow the live weights. Everything it started is stopped at the
# end, also on Ctrl-C. Logs go to .demo/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT=$PWD
DEMO=$ROOT/.demo
LOGS=$DEMO/logs
BIN=$ROOT/target/release
RATE=${DEMO_RATE:-200000}        # log messages per second sent by agent-sim
PHASE=${DEMO_PHASE_SECONDS:-8}   # seconds per phase

NATS_SERVER=${NATS_SERVER_BIN:-}
if [ -z "$NATS_SERVER" ]; then
  if [ -x .tools/bin/nats-server ]; then NATS_SERVER=.tools/bin/nats-server
  else NATS_SERVER=$(command -v nats-server || true); fi
fi
[ -n "$NATS_SERVER" ] || { echo "demo: no nats-server found; run 'make tools'" >&2; exit 1; }

pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    echo
    echo "== stopping everything the demo started"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 50); do
      alive=0
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      [ $alive -eq 0 ] && break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  echo "logs: $LOGS"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== building release binaries"
cargo build --release --quiet --bin distributor --bin analyzer --bin agent-sim

rm -rf "$DEMO"
mkdir -p "$LOGS"
PORT=4222 MPORT=8222
if ! port_free $PORT || ! port_free $MPORT; then
  PORT=$(free_port); MPORT=$(free_port)
  echo "demo: port 4222 or 8222 is taken; using free ports $PORT (clients) and $MPORT (monitoring)"
fi
export NATS_URL=nats://127.0.0.1:$PORT

echo "== starting nats-server on $NATS_URL (monitoring http://127.0.0.1:$MPORT)"
"$NATS_SERVER" -c nats.conf -a 127.0.0.1 -p "$PORT" -m "$MPORT" >"$LOGS/nats-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do port_free "$PORT" || break; sleep 0.1; done
port_free "$PORT" && { echo "demo: nats-server did not start; see $LOGS/nats-server.log" >&2; exit 1; }

echo "== starting one distributor and analyzers 1, 2, 3 (weights 0.5, 0.3, 0.2)"
"$BIN/distributor" run --replica-id demo-1 >"$LOGS/distributor.log" 2>&1 &
pids+=($!)
start_analyzer() { # id weight
  "$BIN/analyzer" --id "$1" --weight "$2" --instance "demo$1" --heartbeat-interval 500ms \
    --report-interval 1s >"$LOGS/analyzer-$1.out" 2>"$LOGS/analyzer-$1.log" &
  pids+=($!)
  eval "ANALYZER_$1=$!"
}
start_analyzer 1 0.5
start_analyzer 2 0.3
start_analyzer 3 0.2
sleep 1.5   # one heartbeat round, so the distributor knows all three

sim() { # extra agent-sim flags…
  "$BIN/agent-sim" --agents 20 --packet-size 1..200 --rate "$RATE" --duration "${PHASE}s" \
    --verify --quiet-period 3s "$@"
}

echo
echo "== phase 1: three analyzers, ${PHASE}s of load at $RATE msg/s"
sim --max-deviation 0.5

echo
echo "== phase 2: analyzer 3 withdraws (SIGTERM) half-way through the run"
( sleep $((PHASE / 2)); kill -TERM "$ANALYZER_3" ) &
# The run spans two memberships, so its overall shares match neither: check loss only here and
# read the shares since the change from the distributor below.
sim --max-deviation 100
echo
echo "-- distributor view: shares since the last membership change (target 62.5 / 37.5)"
"$BIN/distributor" stats

echo
echo "== phase 3: analyzer 4 (weight 0.4) joins half-way through the run"
( sleep $((PHASE / 2)); exec "$BIN/analyzer" --id 4 --weight 0.4 --instance demo4 --heartbeat-interval 500ms \
    --report-interval 1s >"$LOGS/analyzer-4.out" 2>"$LOGS/analyzer-4.log" ) &
pids+=($!)
sim --max-deviation 100
echo
echo "-- distributor view: shares since analyzer 4 joined (target 41.7 / 25.0 / 33.3)"
"$BIN/distributor" stats

echo
echo "== phase 4: steady state with analyzers 1, 2, 4"
sim --max-deviation 0.5
