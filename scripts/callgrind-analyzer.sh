#!/bin/bash
# Analyzer instructions per message under callgrind (stable on a shared machine): one
# nats-server (.tools/bin), the release distributor (default flags: batches on, as in `make
# bench`), one release analyzer under valgrind taking every packet, agent-sim sending COUNT
# single messages over SECONDS. Compare per-function inclusive costs between builds
# (`callgrind_annotate --inclusive=yes OUT`): the whole-process total depends on how valgrind's
# timing groups the packets in batches.
# usage: scripts/callgrind-analyzer.sh COUNT SECONDS OUT [analyzer flags...]
set -e
COUNT=$1; SECS=$2; OUT=$3; shift 3; EXTRA=("$@")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
NS=${NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}
# Whatever fails (set -e), no server, analyzer or distributor is left running.
. "$ROOT/scripts/pipeline-common.sh"
start_server
start_distributor cg --heartbeat-timeout-factor 20
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file=$OUT $BIN/analyzer --nats-url $URL \
  --id 1 --weight 1 --instance a1 --heartbeat-interval 500ms "${EXTRA[@]}" \
  >$D/a1.out 2>$D/a1.log & APID=$!
PIDS+=($APID)
sleep 10
$BIN/agent-sim --nats-url $URL --agents 4 --connections 2 --packet-size 1 \
  --rate $((COUNT / SECS)) --count $COUNT --verify --quiet-period 4s --max-loss 100 \
  --max-deviation 100 --json > $D/report.json 2>$D/agent.log || true
python3 -c "import json;v=json.load(open('$D/report.json'))['verification'];print('sent',v['sent'],'received',v['received'])"
kill -TERM $APID; wait $APID || true
callgrind_annotate $OUT 2>/dev/null | grep -m1 "PROGRAM TOTALS"
