#!/bin/bash
# The distributor's CPU per packet, split user / kernel, with its minor page faults and context
# switches, from /proc (what `make bench` reports as "distributor CPU per million messages",
# without the bench's search). One nats-server (.tools/bin, a free loopback port), three
# analyzers, the release distributor, then agent-sim paced below saturation: COUNT messages in
# packets of PACKET_SIZE (default 100) at RATE messages/s. /proc/PID/stat and /proc/PID/status
# are read just before the load starts and after it ended (the distributor idles in between),
# so the figure is the load's only. Per packet means per packet the analyzers received: a run
# that lost packets (the line says how many) is not comparable with one that did not. CPU time
# on a shared machine: interleave A/B runs. The line is also appended to OUT.
# PROFILE=perf adds `perf record -e cpu-clock -g` of the distributor during the load (OUT.perf,
# PERF_G= for no call graphs); PROFILE=strace adds `strace -c -f` (OUT.strace); PROFILE=syscalls
# counts syscalls and context switches with `perf stat` tracepoints, which slow the process far
# less than strace (OUT.syscalls). BIN picks the binaries (default target/release).
# usage: [PACKET_SIZE=N] [PROFILE=perf|strace|syscalls] scripts/cpu-per-packet.sh RATE COUNT OUT [distributor flags...]
set -e
RATE=$1; COUNT=$2; OUT=$3; shift 3; EXTRA=("$@")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
NS=${NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}
SIZE=${PACKET_SIZE:-100}
. "$ROOT/scripts/pipeline-common.sh"
start_server
start_analyzers "1 0.5" "2 0.3" "3 0.2"
start_distributor cpp "${EXTRA[@]}"
# minflt, utime, stime (clock ticks), then voluntary / involuntary context switches.
sample() {
  local stat; stat=$(cut -d' ' -f10,14,15 "/proc/$DPID/stat")
  local ctx; ctx=$(cat /proc/$DPID/task/*/status | awk '/^voluntary_ctxt_switches/ {v += $2}
    /^nonvoluntary_ctxt_switches/ {n += $2} END {print v, n}')
  echo "$stat $ctx"
}
BEFORE=$(sample)
case "$PROFILE" in perf|syscalls) command -v perf >/dev/null || { echo "PROFILE=$PROFILE needs perf" >&2; exit 2; } ;; esac
case "$PROFILE" in
  perf) perf record -q -e cpu-clock ${PERF_G--g} -p $DPID -o "$OUT.perf" 2>/dev/null & PROF=$! ;;
  strace) strace -c -f -p $DPID -o "$OUT.strace" 2>/dev/null & PROF=$! ;;
  syscalls) perf stat -e syscalls:sys_enter_recvfrom,syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex,syscalls:sys_enter_write,context-switches,cpu-migrations \
      -p $DPID -o "$OUT.syscalls" 2>/dev/null & PROF=$! ;;
esac
START=$(date +%s.%N)
"$BIN/agent-sim" --nats-url "$URL" --agents 4 --connections 2 --packet-size "$SIZE" \
  --rate "$RATE" --count "$COUNT" --verify --quiet-period 2s --max-loss 100 \
  --max-deviation 100 --json > "$D/report.json" 2>"$D/agent.log" || true
END=$(date +%s.%N)
[ -n "$PROF" ] && { kill -INT $PROF; wait $PROF 2>/dev/null || true; }
AFTER=$(sample)
TCK=$(getconf CLK_TCK)
python3 - "$D/report.json" "$BEFORE" "$AFTER" "$TCK" "$SIZE" "$START" "$END" "$OUT" <<'EOF'
import json, sys
report, before, after, tck, size, start, end, out = sys.argv[1:]
v = json.load(open(report))["verification"]
b = [int(x) for x in before.split()]; a = [int(x) for x in after.split()]
minflt, ut, st, vcs, ics = (a[i] - b[i] for i in range(5))
tck, size = int(tck), int(size)
received = v["received"]; packets = received / size
if not received:
    import os
    log = open(os.path.join(os.path.dirname(report), "agent.log")).read()[-2000:]
    sys.exit(f"the analyzers received nothing of {v['sent']} messages sent, so there is no CPU per packet; agent-sim's log ends:\n{log}")
us = lambda ticks: ticks / tck * 1e6 / packets
line = (f"sent {v['sent']} received {received} (lost {100 * (1 - received / v['sent']):.1f} %) in {float(end) - float(start):.1f} s; "
        f"distributor CPU {(ut + st) / tck / received * 1e6:.3f} s/M msgs = "
        f"{us(ut + st):.1f} us/packet (user {us(ut):.1f}, kernel {us(st):.1f}); "
        f"minflt {minflt / packets:.2f}/packet; ctx switches {vcs / packets:.2f} voluntary + "
        f"{ics / packets:.2f} involuntary /packet")
print(line)
open(out, "a").write(line + "\n")
EOF
