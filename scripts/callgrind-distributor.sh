#!/bin/bash
# Distributor instructions per packet under callgrind (stable on a shared machine), as
# BENCHMARKS.md reports them. One nats-server (.tools/bin), two analyzers, the release
# distributor under valgrind; LOAD is `nats` (agent-sim single messages), `alo` (the same,
# through the at-least-once stream: `--delivery at-least-once`) or `http` (POST /message/send
# from scripts/http_post_load.py). Run it twice with the same SECONDS and COUNT
# and 2×COUNT: (instructions of the second − of the first) / COUNT is the cost of a packet.
# PACKET_SIZE=100 makes agent-sim send COUNT packets of 100 messages (nats and alo; default 1).
# usage: [PACKET_SIZE=N] scripts/callgrind-distributor.sh nats|alo|http COUNT SECONDS OUT [distributor flags...]
set -e
LOAD=$1; COUNT=$2; SECS=$3; OUT=$4; shift 4; EXTRA=("$@")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
NS=${NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}
# Whatever fails (set -e), no server, analyzer or distributor is left running.
. "$ROOT/scripts/pipeline-common.sh"
start_server
HPORT=$(free_port)
start_analyzers "1 0.6" "2 0.4"
MODE=(); [ "$LOAD" = http ] && MODE=(--http 127.0.0.1:$HPORT)
[ "$LOAD" = alo ] && MODE=(--delivery at-least-once)
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file=$OUT $BIN/distributor run \
  --nats-url $URL --replica-id cg --heartbeat-timeout-factor 20 "${MODE[@]}" "${EXTRA[@]}" \
  2>$D/distributor.log & DPID=$!
sleep 10
if [ "$LOAD" = http ]; then
  python3 $ROOT/scripts/http_post_load.py $HPORT $COUNT $SECS
else
  $BIN/agent-sim --nats-url $URL --agents 4 --connections 2 --packet-size ${PACKET_SIZE:-1} \
    --rate $((COUNT * ${PACKET_SIZE:-1} / SECS)) --count $((COUNT * ${PACKET_SIZE:-1})) --verify --quiet-period 2s --max-loss 100 \
    --max-deviation 100 --json > $D/report.json 2>$D/agent.log || true
  python3 -c "import json;v=json.load(open('$D/report.json'))['verification'];print('sent',v['sent'],'received',v['received'])"
fi
sleep 2
kill -TERM $DPID; wait $DPID || true
DPID=
callgrind_annotate $OUT 2>/dev/null | grep -m1 "PROGRAM TOTALS"
