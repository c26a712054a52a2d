"""Alternated rounds of the same closed load against several servers: CPU per request of each.

What knockout.py (one Payware per part switched off) and ab.py (a revision against this tree)
share: this process and the upstream on core 0, each server pinned alone on core 1 while it is
measured, the order reversed every other round so the machine's drift cancels, CPU from each
process tree's schedstat.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from loadgen import Client, fire, median
from procs import Child, cpu_ns, pin, process_tree
from scenarios import Scenario


def alternated_rounds(servers: dict[str, tuple[Child, str]], upstream: Child, scenario: Scenario, *,
                      concurrency: int, requests: int, rounds: int, warmup: int) -> dict[str, list[float]]:
    """µs of CPU per request of each server (name -> (child, its customer's key)), per round."""
    os.sched_setaffinity(0, {0})
    pin(process_tree(upstream.pid), {0})
    loop = asyncio.new_event_loop()

    def load(name: str, count: int) -> None:
        child, key = servers[name]
        client = Client(child.url, concurrency)
        loop.run_until_complete(fire(client, scenario.path, scenario.request_headers(key), scenario, count,
                                     concurrency, time.monotonic() + 3600, name))
        client.close()

    try:
        names = list(servers)
        for name in names:  # warm-up: tokenizer, pools, caches
            load(name, min(warmup, requests))
        per_round: dict[str, list[float]] = {name: [] for name in names}
        for number in range(rounds):
            for name in names if number % 2 == 0 else reversed(names):
                pids = process_tree(servers[name][0].pid)
                pin(pids, {1})
                before = cpu_ns(pids)
                load(name, requests)
                per_round[name].append((cpu_ns(pids) - before) / 1000 / requests)
                pin(pids, {0, 1})
            print(f"round {number + 1}/{rounds}: " + ", ".join(
                f"{name} {per_round[name][-1]:.0f}" for name in names), file=sys.stderr)
        return per_round
    finally:
        loop.close()


def spread(values: list[float]) -> str:
    """A server's rounds in a report cell: `median [lowest–highest]` µs per request."""
    return f"{median(values):.0f} [{min(values):.0f}–{max(values):.0f}]"
