#!/usr/bin/env python3
"""Turns the JSON files of loadtest/compare.sh into one Markdown table.

usage: summary.py RESULTS_DIR
"""
import json
import os
import sys

ORDER = ["select", "select-extended", "prepared", "tpcb", "churn", "idle", "open-loop",
         "open-loop-quarter", "select-1000", "select-5000", "select-1000-pool100", "select-tls",
         "idle-tls"]


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(d):
    print(open(os.path.join(d, "versions.txt")).read().strip().replace("\n", "  \n"))
    print()
    print("| workload | target | TPS | × direct | × PgBouncer | p99 ms | CPU s / 1k tx | errors | RSS B / idle conn |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ORDER:
        path = os.path.join(d, name + ".json")
        if not os.path.exists(path):
            continue
        run = json.load(open(path))
        rows = run["results"]
        by = {r["target"]: r for r in rows}
        direct = by.get("direct")
        pgb = by.get("pgbouncer")
        label = name
        if run["rate"] is not None:
            label = f"open loop @ {run['rate']:.0f} tps"
        for r in rows:
            # "ratio" is the median of round-by-round ratios to the first target.
            x_direct = r["ratio"] / direct["ratio"] if direct else None
            x_pgb = r["ratio"] / pgb["ratio"] if pgb and pgb["ratio"] else None
            rss = r["rss_bytes_per_connection"] if name.startswith("idle") else None
            # No CPU per transaction when none completed (PgBouncer fails `prepared`).
            cpu = r["cpu_s_per_1000"] if r["tps"] > 0 else None
            print(
                f"| {label} | {r['target']} | {r['tps']:.0f} | {fmt(x_direct, '.2f')} | "
                f"{fmt(x_pgb, '.2f')} | {r['p99_ms']:.2f} | {fmt(cpu, '.4f')} | "
                f"{r['errors']} | {fmt(rss, '.0f')} |"
            )
    handshakes(os.path.join(d, "handshakes"))


def handshakes(d):
    """pgpilot's select over TLS alone and beside TLS logins churning, round by round."""
    if not os.path.isdir(d):
        return
    print()
    print("| round | select TPS alone | p99 ms | max ms | beside TLS logins: TPS | p99 ms | max ms | TLS logins / s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    r = 1
    while os.path.exists(os.path.join(d, f"beside-{r}.json")):
        alone, beside, churn = (
            json.load(open(os.path.join(d, f"{kind}-{r}.json")))["results"][0]
            for kind in ("alone", "beside", "churn")
        )
        print(
            f"| {r} | {alone['tps']:.0f} | {alone['p99_ms']:.2f} | {alone['max_ms']:.1f} | "
            f"{beside['tps']:.0f} | {beside['p99_ms']:.2f} | {beside['max_ms']:.1f} | "
            f"{churn['tps']:.0f} |"
        )
        r += 1


if __name__ == "__main__":
    main(sys.argv[1])
