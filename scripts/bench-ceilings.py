#!/usr/bin/env python3
"""The box's CPU ceiling of each row of BENCHMARKS.md's table.

With every process on the same cores, a row cannot go faster than CORES CPU-seconds a second
divided by the CPU all processes spend per message. The table's last column gives the CPU of
everything but the distributor (nats-server, analyzers, load) per million messages of the
sustained run, and the "dist. CPU" column the distributor's. This prints, for each logdist row,
the ceiling with the distributor as it is, how much of it the row reached, and the ceiling with
a distributor that costs nothing, as messages a second and as ratios to the mapping's sustained
rate in the same run. The baselines (raw NATS, the mapping) have no distributor.

usage: scripts/bench-ceilings.py [BENCHMARKS.md] [--cores N]
"""
import argparse
import os
import re
import sys


def rows(text):
    """The main table's rows as dicts keyed by header."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| scenario | payload |"):
            # The table has two "vs mapping" columns (sustained, flood): the first is kept.
            header = [c.strip() for c in line.strip("|").split("|")]
            header = [h if h not in header[:j] else f"{h} ({j})" for j, h in enumerate(header)]
            for body in lines[i + 2 :]:
                if not body.startswith("|"):
                    return
                cells = [c.strip() for c in body.strip("|").split("|")]
                yield dict(zip(header, cells))
            return
    sys.exit("no results table (a line starting '| scenario | payload |') found")


def number(cell):
    cell = cell.replace(",", "").rstrip("×")
    try:
        return float(cell)
    except ValueError:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default="BENCHMARKS.md")
    parser.add_argument("--cores", type=float, default=float(os.cpu_count() or 2))
    args = parser.parse_args()
    table = list(rows(open(args.file, encoding="utf-8").read()))
    other_col = next((k for k in (table[0] if table else {}) if k.startswith("other CPU")), None)
    if other_col is None:
        sys.exit("the table has no 'other CPU' column")
    mapping = {
        r["payload"]: number(r["sustained msg/s"])
        for r in table
        if r["scenario"] == "nats-server weighted mapping"
    }
    print(f"cores: {args.cores:g}; ceiling = cores / CPU seconds per message of every process")
    print(
        "| scenario | payload | sustained | vs mapping | others s/M | dist. s/M "
        "| ceiling | vs mapping | sustained / ceiling | ceiling, distributor free | vs mapping |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in table:
        if other_col not in r:
            continue
        parts = [number(p) for p in re.split(r"\s*·\s*", r[other_col])]
        # The baselines have no distributor ("-").
        dist = number(r["dist. CPU s / M msgs"]) or 0.0
        base = mapping.get(r["payload"])
        sustained = number(r["sustained msg/s"])
        others = sum(parts) if None not in parts else None
        # A row without a sustained rate ("-": no paced run qualified) or without CPU figures
        # has no ceiling to read.
        if not others or not base or sustained is None:
            print(f"| {r['scenario']} | {r['payload']} | {r['sustained msg/s']} | - | - | - | - | - | - | - | - |")
            continue
        ceiling = args.cores / (others + dist) * 1e6
        free = args.cores / others * 1e6
        print(
            f"| {r['scenario']} | {r['payload']} | {r['sustained msg/s']} | {sustained / base:.2f}× "
            f"| {others:.2f} | {dist:.2f} | {ceiling:,.0f} | {ceiling / base:.2f}× | {sustained / ceiling:.0%} "
            f"| {free:,.0f} | {free / base:.2f}× |"
        )


if __name__ == "__main__":
    main()
