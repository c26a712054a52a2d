"""What the kernel does for a request: the reference against Payware, side by side.

    .venv/bin/python bench/kernel.py --limits                 # capped chat, c=16, memory counters
    .venv/bin/python bench/kernel.py --limits --syscalls      # and the system calls of each (strace)

For each server, per request: user and system CPU (the process's own clock ticks: coarse, so
read them over rounds of thousands of requests), the TCP segments the machine exchanged (the
load, the server and the upstream together: /proc/net/snmp), and with --syscalls each system
call's count (`strace -c -f` on one extra round: strace slows the server, so only the counts
are kept, not its times). Alternated rounds as ab.py runs them (rounds.py): this process and
the upstream on core 0, the server measured alone on core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen import Client, fire, median
from procs import (ROOT, Variant, cpu_ticks, first_answer, pin, process_tree, spawn_payware, spawn_reference,
                   start_upstream)
from scenarios import SCENARIOS

SEGMENTS = ("InSegs", "OutSegs")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limits", action="store_true", help="the customer has a hard cap and RPM/TPM limits")
    parser.add_argument("--counters", default="memory", help="memory (default) or a redis:// URL")
    parser.add_argument("--scenario", default="chat", choices=sorted(SCENARIOS))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8000, help="per server and round (default 8000)")
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds (default 4)")
    parser.add_argument("--syscalls", action="store_true", help="also count each server's system calls")
    return parser.parse_args(argv)


def tcp_segments() -> int:
    with open("/proc/net/snmp") as fh:
        rows = [line.split() for line in fh if line.startswith("Tcp:")]
    header, values = rows[0], rows[1]
    return sum(int(values[header.index(name)]) for name in SEGMENTS)


def ticks(pids: list[int]) -> tuple[int, int]:
    user = system = 0
    for pid in pids:
        u, s = cpu_ticks(pid)
        user, system = user + u, system + s
    return user, system


def main(argv=None) -> int:
    args = parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    tmp = Path(tempfile.mkdtemp(prefix="payware-kernel-"))
    upstream = start_upstream(tmp)
    variant = Variant(counters=args.counters, limits=args.limits, customer=f"kernel-{os.getpid()}",
                      key=f"pw-kernel-{os.getpid()}-0123456789abcdef")
    servers = {"reference": spawn_reference(tmp, upstream.url),
               "Payware": spawn_payware(tmp, variant, upstream.url, root=ROOT, extra_args="")}
    headers = scenario.request_headers(variant.key)
    loop = asyncio.new_event_loop()

    def load(name: str, count: int) -> None:
        client = Client(servers[name].url, args.concurrency)
        loop.run_until_complete(fire(client, scenario.path, headers, scenario, count, args.concurrency,
                                     time.monotonic() + 3600, name))
        client.close()

    tick = os.sysconf("SC_CLK_TCK")
    rows: dict[str, dict[str, list[float]]] = {name: {"user": [], "system": [], "segments": []} for name in servers}
    try:
        os.sched_setaffinity(0, {0})
        pin(process_tree(upstream.pid), {0})
        for name, child in servers.items():
            first_answer(child, child.url + scenario.path, scenario.body, headers)
            load(name, 1500)
        for number in range(args.rounds):
            for name in servers if number % 2 == 0 else reversed(servers):
                pids = process_tree(servers[name].pid)
                pin(pids, {1})
                (user, system), segments = ticks(pids), tcp_segments()
                load(name, args.requests)
                (user2, system2), segments2 = ticks(pids), tcp_segments()
                pin(pids, {0, 1})
                row = rows[name]
                row["user"].append((user2 - user) / tick * 1e6 / args.requests)
                row["system"].append((system2 - system) / tick * 1e6 / args.requests)
                row["segments"].append((segments2 - segments) / args.requests)
            print(f"round {number + 1}/{args.rounds}", file=sys.stderr)
        print(f"\n{scenario.name}, c={args.concurrency}, {'hard cap + RPM/TPM' if args.limits else 'no cap'}, "
              f"{args.counters} counters; median of {args.rounds} alternated rounds of {args.requests}\n")
        print("| per request | " + " | ".join(servers) + " |")
        print("|---|" + "---:|" * len(servers))
        for label, field, digits in (("user CPU, µs", "user", 0), ("system CPU, µs", "system", 0),
                                     ("TCP segments sent and received (all processes)", "segments", 2)):
            print(f"| {label} | " + " | ".join(f"{median(rows[n][field]):.{digits}f}" for n in servers) + " |")
        if args.syscalls:
            counts = {name: syscalls(servers[name].pid, lambda: load(name, args.requests), args.requests)
                      for name in servers}
            calls = sorted({call for table in counts.values() for call in table},
                           key=lambda call: -max(table.get(call, 0) for table in counts.values()))
            for call in calls:
                if max(table.get(call, 0) for table in counts.values()) >= 0.01:
                    print(f"| `{call}` | " + " | ".join(f"{counts[n].get(call, 0):.2f}" for n in servers) + " |")
        return 0
    finally:
        loop.close()
        for child in servers.values():
            child.stop()
        upstream.stop()


def syscalls(pid: int, run, requests: int) -> dict[str, float]:
    """Each system call's count per request over one round under `strace -c -f`."""
    out = Path(tempfile.mkstemp(prefix="payware-strace-")[1])
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached to every thread before the round starts
    run()
    tracer.terminate()
    tracer.wait()
    counts = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3]) / requests
    out.unlink()
    return counts


if __name__ == "__main__":
    sys.exit(main())
