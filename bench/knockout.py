"""Where Payware's CPU goes: the same load against Payware processes that each lack one part.

    .venv/bin/python bench/knockout.py                    # no cap: none, metering, access, metrics, journal, ledger
    .venv/bin/python bench/knockout.py --limits           # a capped, rate-limited customer; adds `prompt`
    .venv/bin/python bench/knockout.py --parts none access --rounds 6 --scenario chat-stream

Profilers mislead in the serving process (bench/README.md, "Finding where the time goes"), so
this switches parts off instead: one Payware per part, started by knockout_serve.py with that
part patched out (or off by the product's own switch), all on memory counters with the same
config as bench/run.py's. Every process gets the same closed load in alternated rounds (A B C,
then C B A), pinned alone on one core while the load client and the upstream share the other;
CPU per request from each process tree's schedstat. A part's cost is its process's CPU per
request below `none`'s, in the same run.

Parts: `none` (the whole path), `metering` (no pricing, event, journal line, counters or
settlement: Call.record gives the reservation back), `access` (PAYWARE_ACCESS_LOG=0),
`metrics` (PAYWARE_METRICS=off), `journal` (events not serialized to the journal), `ledger`
(the writer thread writes nothing), `prompt` (admission takes the body's bytes as the prompt's
tokens: with --limits).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from loadgen import median
from procs import ROOT, Variant, first_answer, free_port, payware_config, python, spawn, start_upstream
from rounds import alternated_rounds, spread
from scenarios import SCENARIOS

BENCH = Path(__file__).resolve().parent
ENV = {"access": {"PAYWARE_ACCESS_LOG": "0"}, "metrics": {"PAYWARE_METRICS": "off"}}
PARTS = ("none", "metering", "access", "metrics", "journal", "ledger", "prompt")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, help="default: every part (`prompt` with --limits)")
    parser.add_argument("--limits", action="store_true", help="the customer has a hard cap and RPM/TPM limits")
    parser.add_argument("--scenario", default="chat", choices=sorted(SCENARIOS))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8000, help="per process and round (default 8000)")
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds (default 4)")
    args = parser.parse_args(argv)
    if args.parts is None:
        args.parts = [p for p in PARTS if p != "prompt" or args.limits]
    if "none" not in args.parts:
        args.parts.insert(0, "none")
    return args


def start(part: str, tmp: Path, upstream_url: str, limits: bool):
    """One Payware without `part`, answering; returns (child, key)."""
    key = f"pw-knockout-{part}-{os.getpid()}-0123456789abcdef"
    variant = Variant(counters="memory", limits=limits, customer=f"knockout-{part}-{os.getpid()}", key=key)
    home = tmp / part
    home.mkdir()
    config = home / "payware.yaml"
    config.write_text(payware_config(variant, upstream_url + "/v1", home))
    port = free_port()
    argv = [python(), str(BENCH / "knockout_serve.py"), part, "serve", "--config", str(config), "--port",
            str(port), "--workers", "1"]
    saved = {name: os.environ.get(name) for name in ENV.get(part, {})}
    os.environ.update(ENV.get(part, {}))  # spawn passes the environment on
    try:
        child = spawn(f"payware-{part}", argv, tmp, cwd=ROOT, url=f"http://127.0.0.1:{port}")
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return child, key


def main(argv=None) -> int:
    args = parse_args(argv)
    scenario = SCENARIOS[args.scenario]
    tmp = Path(tempfile.mkdtemp(prefix="payware-knockout-"))
    upstream = start_upstream(tmp)
    children = {}
    try:
        for part in args.parts:
            children[part] = start(part, tmp, upstream.url, args.limits)
        for part, (child, key) in children.items():
            first_answer(child, child.url + scenario.path, scenario.body, scenario.request_headers(key))
        per_round = alternated_rounds(children, upstream, scenario, concurrency=args.concurrency,
                                      requests=args.requests, rounds=args.rounds, warmup=2000)
        base = median(per_round["none"])
        print(f"\nCPU per request, {scenario.name}, c={args.concurrency}, "
              f"{'hard cap + RPM/TPM' if args.limits else 'no cap'}, memory counters; "
              f"median of {args.rounds} alternated rounds of {args.requests} [range]\n")
        print("| without | µs/request | the part costs |")
        print("|---|---:|---:|")
        for part in args.parts:
            values = per_round[part]
            cost = "" if part == "none" else f"{base - median(values):+.0f} µs".replace("+", "")
            print(f"| {part} | {spread(values)} | {cost} |")
        return 0
    finally:
        for child, _ in children.values():
            child.stop()
        upstream.stop()


if __name__ == "__main__":
    sys.exit(main())
