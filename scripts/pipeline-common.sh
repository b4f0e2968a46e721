# Sourced by the measuring scripts (cpu-per-packet.sh, callgrind-distributor.sh, flood-rss.sh,
# latency-probe.sh): one nats-server with JetStream on a free loopback port and the release
# analyzers, stopped with the distributor (DPID, when set) and their directory removed whatever
# way the script ends.
# Needs BIN (the binaries) and NS (nats-server); sets D, PORT, URL, NSPID and PIDS (and DPID).

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

start_server() {
  D=$(mktemp -d)
  PORT=$(free_port)
  printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s/js" }\nmax_payload: 8MB\n' "$PORT" "$D" > "$D/nats.conf"
  URL=nats://127.0.0.1:$PORT
  "$NS" -c "$D/nats.conf" -l "$D/server.log" & NSPID=$!
  PIDS=()
  trap 'kill "${PIDS[@]}" $NSPID ${DPID:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
  sleep 0.5
}

# start_analyzers "ID WEIGHT" ...: one analyzer process each, counted in PIDS.
start_analyzers() {
  local a i w
  for a in "$@"; do read -r i w <<< "$a"
    RUST_LOG=warn "$BIN/analyzer" --nats-url "$URL" --id "$i" --weight "$w" --instance "a$i" \
      --heartbeat-interval 500ms --report-interval 200ms >"$D/a$i.out" 2>"$D/a$i.log" & PIDS+=($!)
  done
}

# start_distributor REPLICA [flags...]: the release distributor as replica REPLICA (its log in
# $D/distributor.log), given 3 s to start; exits with its log if it did not. Sets DPID.
start_distributor() {
  local replica=$1; shift
  RUST_LOG=warn "$BIN/distributor" run --nats-url "$URL" --replica-id "$replica" "$@" \
    2>"$D/distributor.log" & DPID=$!; PIDS+=($DPID)
  sleep 3
  kill -0 $DPID 2>/dev/null || { echo "the distributor exited at start; its log:" >&2; tail -20 "$D/distributor.log" >&2; exit 1; }
}
