"""A change's effect: the same Payware, before (A: a git revision) and after (B: this tree), side by side.

    .venv/bin/python bench/ab.py --base 5709e4a --limits                       # capped chat, c=16
    .venv/bin/python bench/ab.py --base HEAD~1 --scenario chat-stream --rounds 8
    .venv/bin/python bench/ab.py --base v1 --limits --counters redis://127.0.0.1:6379/0

A change's few percent are below what two runs of bench/run.py can tell apart (the machine's
speed drifts more than that between runs), but not below what one run of both can: the
revision is checked out in a temporary git worktree, both trees serve the same config (one
customer each, the same variant) and the same closed load, in alternated rounds (A B, then B
A), each pinned alone on one core while it is measured; CPU per request from each process
tree's schedstat. What is reported is B's median over A's (B/A): 0.95 means the change took 5 %
of the CPU a request cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from loadgen import median
from procs import ROOT, Variant, first_answer, spawn_payware, start_upstream
from rounds import alternated_rounds, spread
from scenarios import SCENARIOS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare this tree with (A)")
    parser.add_argument("--limits", action="store_true", help="the customer has a hard cap and RPM/TPM limits")
    parser.add_argument("--counters", default="memory", help="memory (default) or a redis:// URL")
    parser.add_argument("--scenario", default="chat", choices=sorted(SCENARIOS))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3000, help="per tree and round (default 3000)")
    parser.add_argument("--rounds", type=int, default=6, help="alternated rounds (default 6)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    tmp = Path(tempfile.mkdtemp(prefix="payware-ab-"))
    base = tmp / "base"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(base), args.base], check=True)
    upstream = start_upstream(tmp)
    children, customers = {}, []
    try:
        for name, root in (("A", base), ("B", ROOT)):
            variant = Variant(counters=args.counters, limits=args.limits, customer=f"ab-{name}-{os.getpid()}",
                              key=f"pw-ab-{name}-{os.getpid()}-0123456789abcdef")
            customers.append(variant.customer)
            (tmp / name).mkdir()
            child = spawn_payware(tmp / name, variant, upstream.url, root=root, extra_args="")
            first_answer(child, child.url + scenario.path, scenario.body, scenario.request_headers(variant.key))
            children[name] = (child, variant.key)
        per_round = alternated_rounds(children, upstream, scenario, concurrency=args.concurrency,
                                      requests=args.requests, rounds=args.rounds, warmup=1500)
        a, b = median(per_round["A"]), median(per_round["B"])
        print(f"\nCPU per request, {scenario.name}, c={args.concurrency}, "
              f"{'hard cap + RPM/TPM' if args.limits else 'no cap'}, {args.counters} counters; "
              f"median of {args.rounds} alternated rounds of {args.requests} [range]\n")
        print("| tree | µs/request |")
        print("|---|---:|")
        for name, label in (("A", args.base), ("B", "this tree")):
            values = per_round[name]
            print(f"| {name}: {label} | {spread(values)} |")
        print(f"\nB/A {b / a:.3f}")
        return 0
    finally:
        for child, _ in children.values():
            child.stop()
        upstream.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
        if args.counters != "memory":
            asyncio.run(forget_keys(args.counters, customers))


async def forget_keys(url: str, customers: list[str]) -> None:
    """Delete the run's keys (its customers are unique to the run) from the Redis it used."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        for customer in customers:
            async for key in client.scan_iter(match=f"*{{{customer}}}*", count=1000):
                await client.delete(key)
    finally:
        await client.aclose()


if __name__ == "__main__":
    sys.exit(main())
