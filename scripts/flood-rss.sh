#!/bin/bash
# The distributor's peak RSS under a flood, as `make bench`'s "dist. peak RSS" column reads it
# (VmHWM), without the bench's search: one nats-server (.tools/bin, a free loopback port), three
# analyzers, the release distributor with the given flags, then agent-sim as fast as it can for
# SECONDS with packets of PACKET_SIZE messages. Prints what was sent and received and the peak.
# Memory under a flood varies from run to run: interleave A/B runs.
# usage: scripts/flood-rss.sh PACKET_SIZE SECONDS [distributor flags...]
set -e
SIZE=$1; SECS=$2; shift 2; EXTRA=("$@")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
NS=${NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}
. "$ROOT/scripts/pipeline-common.sh"
start_server
start_analyzers "1 0.5" "2 0.3" "3 0.2"
start_distributor flood "${EXTRA[@]}"
"$BIN/agent-sim" --nats-url "$URL" --agents 4 --connections 2 --packet-size "$SIZE" --rate 0 \
  --duration "${SECS}s" --verify --quiet-period 2s --max-loss 100 --max-deviation 100 --json \
  > "$D/report.json" 2>"$D/agent.log" || true
HWM=$(awk '/VmHWM/ {print $2}' /proc/$DPID/status)
python3 -c "import json;v=json.load(open('$D/report.json'))['verification'];print('sent',v['sent'],'received',v['received'],'peak RSS MiB',round($HWM/1024,1))"
