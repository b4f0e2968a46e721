#!/bin/bash
# Latency of one paced run, as the bench's half-rate run measures it (agent send -> analyzer,
# p50/p99 in µs per analyzer, from the stats bucket through agent-sim --verify), and the CPU
# seconds each process spent: one nats-server, the bench's three analyzers (0.5, 0.3, 0.2), the
# release distributor (at-most-once, or at-least-once with `alo`), agent-sim at RATE log messages
# a second in packets of PACKET_SIZE. ANALYZER_FLAGS go to every analyzer. For A/B runs of a
# setting, take them in turns: one run's p99 moves by tens of percent on a shared machine.
# usage: [ANALYZER_FLAGS=...] scripts/latency-probe.sh amo|alo PACKET_SIZE RATE SECONDS [distributor flags...]
set -e
MODE=$1; PS=$2; RATE=$3; SECS=$4; shift 4; EXTRA=("$@")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
NS=${NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}
. "$ROOT/scripts/pipeline-common.sh"
start_server
for a in "1 0.5" "2 0.3" "3 0.2"; do read -r i w <<< "$a"
  RUST_LOG=warn "$BIN/analyzer" --nats-url "$URL" --id "$i" --weight "$w" --instance "b$i" \
    --heartbeat-interval 200ms --report-interval 200ms ${ANALYZER_FLAGS:-} >"$D/a$i.out" 2>"$D/a$i.log" & PIDS+=($!)
done
M=(); [ "$MODE" = alo ] && M=(--delivery at-least-once)
start_distributor p1 "${M[@]}" "${EXTRA[@]}"
"$BIN/agent-sim" --nats-url $URL --agents 4 --connections 2 --packet-size $PS --rate $RATE \
  --duration ${SECS}s --verify --quiet-period 2s --max-loss 100 --max-deviation 100 --json > $D/report.json 2>$D/agent.log || true
python3 - "$D/report.json" <<'PY'
import json,sys
v=json.load(open(sys.argv[1]))['verification']
print('sent', v['sent'], 'received', v['received'], 'p50/p99 µs:', ' '.join(f"{a['id']}:{a.get('p50_us')}/{a.get('p99_us')}" for a in v['analyzers']))
PY
cpu() { awk '{printf "%.2f", ($14+$15)/100}' /proc/$1/stat; }
A=(); for p in "${PIDS[@]}"; do [ "$p" = "$DPID" ] || A+=("$(cpu $p)"); done
SUM=$(echo "${A[@]}" | awk '{s = 0; for (i = 1; i <= NF; i++) s += $i; printf "%.2f", s}')
echo "CPU s: server $(cpu $NSPID) distributor $(cpu $DPID) analyzers $SUM"
