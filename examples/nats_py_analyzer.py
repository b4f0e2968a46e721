#!/usr/bin/env python3
"""A logdist analyzer in Python with nats-py, written from docs/protocol.md alone.

It receives its share of packets on `analyzer.<id>` (queue group `analyzer.<id>`), alone or
coalesced in batches (it announces `"batch": 1`), counts log messages by severity, heartbeats on
`logdist.control.<id>`, acknowledges request-style packets
(at-least-once mode), writes its counters to the KV bucket `logdist_stats` under
`analyzer.<id>.<instance>`, and on SIGINT/SIGTERM withdraws, waits for the distributors'
confirmations, drains and writes its final counters.

    pip install nats-py
    python3 examples/nats_py_analyzer.py --id py --weight 0.3
"""

import argparse
import asyncio
import collections
import json
import os
import secrets
import signal
import time

import nats

SEVERITIES = {"TRACE": "TRACE", "DEBUG": "DEBUG", "INFO": "INFO", "WARN": "WARN",
              "WARNING": "WARN", "ERROR": "ERROR", "FATAL": "FATAL", "CRITICAL": "FATAL"}
RECENT_S = 30  # replicas that routed here this recently must confirm the withdrawal


def now_ms():
    return int(time.time() * 1000)


class Analyzer:
    def __init__(self, args):
        self.args = args
        self.instance = args.instance or secrets.token_hex(4)
        self.started_at_ms = now_ms()
        self.messages = self.packets = self.bytes = self.duplicates = self.invalid = 0
        self.batches = 0
        self.by_severity = collections.Counter()
        self.recent_ids = collections.OrderedDict()  # Logdist-Packet-Id de-duplication window
        self.replicas = {}  # Logdist-Distributor -> last packet time
        self.confirmed = set()

    async def on_packet(self, msg):
        headers = msg.headers or {}
        replica = headers.get("Logdist-Distributor")
        if replica:
            self.replicas[replica] = time.monotonic()
        for packet_id, payload in self.packets_of(headers, msg.data):
            if packet_id and packet_id in self.recent_ids:
                self.duplicates += 1
                continue
            if packet_id:
                self.recent_ids[packet_id] = None
                if len(self.recent_ids) > 100_000:
                    self.recent_ids.popitem(last=False)
            self.count(payload)
        if msg.reply:  # at-least-once: one empty reply acknowledges the packet, or the whole batch
            await msg.respond(b"")

    def packets_of(self, headers, data):
        """(packet id, payload) of each packet: one, or those of a batch (docs/protocol.md)."""
        if "Logdist-Batch" not in headers:
            return [(headers.get("Logdist-Packet-Id"), data)]
        try:
            n = int(headers["Logdist-Batch"])
            lengths = [int(x) for x in headers["Logdist-Batch-Lengths"].split(",")]
            ids = headers.get("Logdist-Batch-Packet-Ids", "," * (n - 1)).split(",")
            if len(lengths) != n or len(ids) != n or sum(lengths) != len(data):
                raise ValueError("lengths do not match")
        except (KeyError, ValueError):
            self.invalid += 1
            return []
        self.batches += 1
        packets, start = [], 0
        for length, packet_id in zip(lengths, ids):
            packets.append((packet_id or None, data[start:start + length]))
            start += length
        return packets

    def count(self, payload):
        try:
            value = json.loads(payload)
        except ValueError:
            self.invalid += 1
            return
        records = value if isinstance(value, list) else [value]
        self.packets += 1
        self.bytes += len(payload)
        for record in records:
            severity = str(record.get("severity", "")).upper()
            self.by_severity[SEVERITIES.get(severity, severity)] += 1
        self.messages += len(records)

    async def on_confirmation(self, msg):
        confirmation = json.loads(msg.data)
        if confirmation.get("instance") == self.instance:
            self.confirmed.add(confirmation.get("distributor"))

    def stats(self, state):
        return json.dumps({
            "id": self.args.id, "instance": self.instance, "weight": self.args.weight,
            "state": state, "started_at_ms": self.started_at_ms, "updated_at_ms": now_ms(),
            "messages": self.messages, "packets": self.packets, "bytes": self.bytes,
            "duplicates": self.duplicates, "invalid_packets": self.invalid,
            "batches": self.batches,
            "by_severity": dict(self.by_severity),
        }).encode()

    def awaiting(self):
        recent = {r for r, t in self.replicas.items() if time.monotonic() - t <= RECENT_S}
        return recent - self.confirmed


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--id", required=True)
    parser.add_argument("--weight", type=float, required=True)
    parser.add_argument("--instance")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0, help="seconds")
    parser.add_argument("--report-interval", type=float, default=1.0, help="seconds")
    args = parser.parse_args()
    analyzer = Analyzer(args)

    nc = await nats.connect(args.nats_url.split(","), name=f"py analyzer {args.id}")
    js = nc.jetstream()
    try:
        kv = await js.key_value("logdist_stats")
    except Exception:
        kv = await js.create_key_value(bucket="logdist_stats")
    key = f"analyzer.{args.id}.{analyzer.instance}"
    subject = f"analyzer.{args.id}"
    control = f"logdist.control.{args.id}"  # its own: distributors check the id against it
    sub = await nc.subscribe(subject, queue=subject, cb=analyzer.on_packet)
    await nc.subscribe(f"{subject}.withdrawn", cb=analyzer.on_confirmation)
    await nc.flush()  # subscribed before announcing, so no packet is routed here unheard

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    heartbeat = json.dumps({"id": args.id, "weight": args.weight, "instance": analyzer.instance,
                            "state": "up", "interval_ms": int(args.heartbeat_interval * 1000),
                            "batch": 1})
    next_report = 0.0
    while not stop.is_set():
        await nc.publish(control, heartbeat.encode())
        if time.monotonic() >= next_report:
            await kv.put(key, analyzer.stats("up"))
            next_report = time.monotonic() + args.report_interval
        try:
            await asyncio.wait_for(stop.wait(), args.heartbeat_interval)
        except asyncio.TimeoutError:
            pass

    # Withdraw first, then keep receiving until every recent replica confirmed (at most 5 s),
    # or until 250 ms passed without a packet when none routed here recently.
    down = {"id": args.id, "instance": analyzer.instance, "state": "down"}
    await nc.publish(control, json.dumps(down).encode())
    await nc.flush()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if analyzer.replicas and not analyzer.awaiting():
            break
        if not analyzer.replicas:
            before = analyzer.packets
            await asyncio.sleep(0.25)
            if analyzer.packets == before:
                break
            continue
        await asyncio.sleep(0.02)
    await sub.drain()
    await kv.put(key, analyzer.stats("down"))
    print(f"analyzer {args.id}/{analyzer.instance} down: {analyzer.messages} msgs "
          f"{analyzer.packets} pkts", flush=True)
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
