"""Payware against a reference pass-through, side by side: CPU per request as a ratio, latency, memory.

    .venv/bin/python bench/run.py            # full run (about a minute on 2 cores)
    .venv/bin/python bench/run.py --quick    # smoke run (seconds)
    .venv/bin/python bench/run.py --help     # every flag; bench/README.md explains the method

Starts, on 127.0.0.1: a fixed-answer upstream (bench/upstream.py), the reference pass-through
(bench/passthrough.py: an aiohttp relay that meters nothing) and one Payware per variant
(`python -m proxy.cli serve`: memory counters, plus a capped and rate-limited customer with
`--limits`, plus Redis counters with `--counters redis://...`). For each scenario
(bench/scenarios.py) and concurrency, the same closed-loop load goes to every target (the
upstream directly, the reference, each Payware) in interleaved rounds (A B C, then C B A: drift
cancels); the server under test has a core to itself, everything else shares the other, and
the cores swap every two rounds. CPU per request is read from each process's own
/proc/<pid>/task/*/schedstat. The run ends by checking that each Payware's summary and ledger
hold exactly every request it proxied.

Markdown on stdout (the ratio table first), progress on stderr, every block in
bench/results/<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import aiohttp

from loadgen import BenchError, Client, fire, latency_stats, median
from procs import (CLK_TCK, ROOT, Child, Variant, cpu_ns, cpu_ticks, first_answer, memory_kb, parents_map, pin,
                   spawn_payware, spawn_reference, start_upstream)
from report import markdown
from scenarios import DEFAULT_SCENARIOS, SCENARIOS, Scenario

BENCH = Path(__file__).resolve().parent


@dataclass
class Target:
    """Where the load goes: the upstream directly, the reference, or one Payware variant."""

    name: str
    kind: str  # "direct" | "reference" | "payware"
    child: Child  # the server that answers (the upstream itself for "direct")
    key: str  # the key it is sent (a Payware key; a dummy for the reference and direct)
    variant: Variant | None = None
    proxied: int = 0  # answered requests, for the metering check
    facts: dict = field(default_factory=dict)  # start-up time, memory, idle CPU, soak

    def url(self, scenario: Scenario) -> str:
        return self.child.url + scenario.path

    def headers(self, scenario: Scenario) -> dict[str, str]:
        """The request headers, the key where that API's SDK puts it."""
        return scenario.request_headers(self.key)

    def serves(self, scenario: Scenario) -> bool:
        """A litellm scenario's model exists only in the Payware with a litellm provider."""
        return not scenario.litellm or self.kind != "payware" or self.variant.litellm


class Bench:
    """The children, the targets, core placement and the measured blocks of one run."""

    def __init__(self, args, log):
        self.args, self.log = args, log
        self.deadline = time.monotonic() + args.max_seconds
        self.children: list[Child] = []
        self.targets: list[Target] = []
        cores = sorted(os.sched_getaffinity(0))
        self.cores = cores if args.pin == "swap" and len(cores) >= 2 else []
        self.redis = {}  # url -> redis.asyncio client, for INFO around Redis variants' blocks

    # ------------------------------------------------------------------ start-up

    def start(self, tmp: Path, variants: list[Variant]) -> None:
        """Start the children one at a time (each start-up timed on an otherwise idle machine)."""
        upstream = start_upstream(tmp)
        self.children.append(upstream)
        self.targets.append(Target("direct", "direct", upstream, "sk-bench-direct"))
        reference = spawn_reference(tmp, upstream.url)
        self.children.append(reference)
        self._ready(Target("reference", "reference", reference, "pw-bench-reference"))
        for variant in variants:
            child = spawn_payware(tmp, variant, upstream.url, root=self.args.proxy_root, extra_args=self.args.proxy_args,
                                  workers=self.args.workers)
            self.children.append(child)
            self._ready(Target(variant.name, "payware", child, variant.key, variant))
        # Idle: once the first requests' ledger writes are done, CPU over `idle` seconds, then memory.
        time.sleep(max(self.args.settle, 0.5))
        servers = self.targets[1:]
        before, started = [cpu_ns(t.child.pids()) for t in servers], time.perf_counter()
        time.sleep(self.args.idle)
        seconds = time.perf_counter() - started
        for target, cpu in zip(servers, before):
            pids = target.child.pids()
            target.facts["idle_cpu_us_per_s"] = (cpu_ns(pids) - cpu) / 1e3 / seconds
            target.facts["memory_kb_idle_after_start"] = memory_kb(pids)
        self.log("bench: " + ", ".join(f"{t.name} {t.child.url} (pid {t.child.pid})" for t in self.targets))

    def _ready(self, target: Target) -> None:
        # the first scenario it serves (`chat` when it serves none of those asked for)
        scenario = next((s for s in (SCENARIOS[n] for n in self.args.scenarios) if target.serves(s)), SCENARIOS["chat"])
        seconds = first_answer(target.child, target.url(scenario), scenario.body, target.headers(scenario))
        target.proxied += 1
        target.facts["startup_s"] = round(seconds, 3)
        self.log(f"bench: {target.name} answered its first request {seconds:.2f} s after its spawn")
        self.targets.append(target)

    # ------------------------------------------------------------------ placement and readings

    def place(self, active: Target, round_no: int) -> dict:
        """The server under test on one core; the rest (client, upstream, idle proxies) on the others.

        The cores swap every two rounds, so each target's A-B-B-A pair runs on each core.
        """
        if not self.cores:
            return {}
        server = self.cores[(round_no // 2) % 2]
        rest = set(self.cores) - {server}
        under_test = None if active.kind == "direct" else active.child
        parents = parents_map()
        for child in self.children:
            if child is not under_test:
                pin(child.pids(parents), rest)
        pin([os.getpid()], rest)
        if under_test is not None:
            pin(under_test.pids(parents), {server})
        return {"server_core": server if under_test else None, "load_cores": sorted(rest)}

    def mark(self) -> dict:
        """CPU so far of every child's process tree (schedstat ns, and stat ticks of the main process)."""
        parents = parents_map()
        marks = {}
        for child in self.children:
            marks[child.name] = cpu_ns(child.pids(parents))
            user, system = cpu_ticks(child.pid)
            marks[child.name + ":ticks"], marks[child.name + ":sys_ticks"] = user + system, system
        return marks

    async def redis_info(self, url: str) -> dict:
        if url not in self.redis:
            import redis.asyncio as aioredis

            self.redis[url] = aioredis.from_url(url)
        client = self.redis[url]
        stats = await client.info("commandstats")
        cpu = await client.info("cpu")
        reads = (await client.info("stats"))["total_reads_processed"]  # a pipeline arrives in one read
        calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
        return {"calls": calls, "cpu_s": cpu["used_cpu_user"] + cpu["used_cpu_sys"], "reads": reads}

    # ------------------------------------------------------------------ load

    async def block(self, target: Target, scenario: Scenario, count: int, concurrency: int, client: Client,
                    round_no: int) -> dict:
        placement = self.place(target, round_no)
        counters = target.variant.counters if target.variant and target.variant.counters != "memory" else None
        redis0 = await self.redis_info(counters) if counters else None
        m0 = self.mark()
        client0, started = time.process_time_ns(), time.perf_counter()
        latencies = await fire(client, scenario.path, target.headers(scenario), scenario, count, concurrency,
                               self.deadline, target.name)
        seconds, client1 = time.perf_counter() - started, time.process_time_ns()
        target.proxied += len(latencies)
        # NOTE: the block's CPU includes what its server does just after it (Payware's ledger
        # flush runs every 0.2 s): the settle pause is inside the measured span.
        await asyncio.sleep(self.args.settle)
        m1 = self.mark()
        out = {"target": target.name, "round": round_no, **placement, "latencies_ns": latencies,
               "seconds": seconds, "cpu_ns": {k: m1[k] - m0[k] for k in m0} | {"client": client1 - client0}}
        if counters:
            redis1 = await self.redis_info(counters)
            out["redis_calls"] = {k: v - redis0["calls"].get(k, 0) for k, v in redis1["calls"].items()
                                  if k != "info" and v != redis0["calls"].get(k, 0)}
            out["redis_cpu_ns"] = round((redis1["cpu_s"] - redis0["cpu_s"]) * 1e9)
            out["redis_reads"] = redis1["reads"] - redis0["reads"] - 3  # less our own three INFOs
        return out

    async def case(self, scenario: Scenario, concurrency: int) -> dict:
        args = self.args
        count = args.requests_c1 if concurrency == 1 else args.requests
        per_round = [count // args.rounds + (1 if i < count % args.rounds else 0) for i in range(args.rounds)]
        targets = [t for t in self.targets if t.serves(scenario)]
        clients = {t.name: Client(t.child.url, concurrency) for t in targets}
        try:
            for target in targets:  # warm-up: connections opened, caches filled
                self.place(target, 0)
                target.proxied += len(await fire(clients[target.name], scenario.path, target.headers(scenario),
                                                 scenario, args.warmup, concurrency, self.deadline, target.name))
            await asyncio.sleep(args.settle)
            blocks = []
            for round_no, n in enumerate(per_round):
                order = targets if round_no % 2 == 0 else targets[::-1]
                for target in order:
                    blocks.append(await self.block(target, scenario, n, concurrency, clients[target.name], round_no))
        finally:
            for client in clients.values():
                client.close()
        result = summarize_case(scenario, concurrency, blocks, targets)
        for row in result["targets"].values():
            self.log(f"  {scenario.name:<17} c={concurrency:<3} {row['name']:<22} {row['rps']:7.0f} req/s  "
                     f"p50 {row['p50_ms']:6.3f} ms  p99 {row['p99_ms']:7.3f} ms  CPU {row['cpu_us_per_req']:6.0f} us/req"
                     + (f"  ratio {row['ratio']:.2f}x" if row.get("ratio") is not None else ""))
        return result

    async def soak(self, target: Target, scenarios: list[Scenario], count: int, concurrency: int) -> None:
        """`count` more requests through `target` (the scenarios in turn), then its memory, idle."""
        self.place(target, 0)
        started, done = time.perf_counter(), 0
        chunk = max(1000, concurrency * 20)
        client = Client(target.child.url, concurrency)
        try:
            while done < count:
                scenario = scenarios[(done // chunk) % len(scenarios)]
                n = min(chunk, count - done)
                done += len(await fire(client, scenario.path, target.headers(scenario), scenario, n, concurrency,
                                       self.deadline, target.name))
        finally:
            client.close()
        seconds = time.perf_counter() - started
        target.proxied += done
        await asyncio.sleep(self.args.idle)
        target.facts["soak"] = {"requests": done, "seconds": round(seconds, 2), "rps": round(done / seconds, 1),
                                "memory_kb_after": memory_kb(target.child.pids())}
        self.log(f"bench: soak {target.name}: {done} requests in {seconds:.1f} s, RSS "
                 f"{target.facts['soak']['memory_kb_after']['VmRSS'] / 1024:.1f} MiB")

    async def metering_check(self, target: Target) -> dict:
        """The summary and the ledger of a Payware hold exactly the requests it was sent."""
        headers = {"Authorization": f"Bearer {target.variant.key}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
            async with session.get(target.child.url + "/v1/usage/summary", headers=headers) as resp:
                if resp.status != 200:
                    raise BenchError(f"{target.name}: GET /v1/usage/summary: HTTP {resp.status}: {await resp.text()}")
                summary = await resp.json()
            events = None
            if not self.args.no_ledger_check:  # the endpoint flushes the recorder first
                async with session.get(target.child.url + "/v1/usage/events", headers=headers) as resp:
                    if resp.status != 200:
                        raise BenchError(f"{target.name}: GET /v1/usage/events: HTTP {resp.status}")
                    events = 0
                    async for line in resp.content:
                        events += bool(line.strip())
        check = {"expected": target.proxied, "summary_requests": summary.get("requests"), "ledger_events": events,
                 "summary_tokens": summary.get("tokens"), "amount_due": summary.get("amount_due")}
        check["ok"] = check["summary_requests"] == target.proxied and events in (None, target.proxied)
        return check

    async def forget_redis_keys(self, variant: Variant) -> int:
        """Delete the run's keys (its customers are unique to the run) from the Redis it used."""
        client = self.redis.get(variant.counters)
        if client is None:
            return 0
        deleted = 0
        async for key in client.scan_iter(match=f"*{{{variant.customer}}}*", count=1000):
            deleted += await client.delete(key)
        return deleted

    async def run(self) -> dict:
        args = self.args
        cases = []
        for name in args.scenarios:
            for concurrency in args.concurrency:
                cases.append(await self.case(SCENARIOS[name], concurrency))
        paywares = [t for t in self.targets if t.kind == "payware"]
        for target in self.targets[1:]:
            target.facts["memory_kb_after_cases"] = memory_kb(target.child.pids())
            target.facts["requests_after_cases"] = target.proxied
        if args.soak:
            for target in paywares:
                scenarios = [SCENARIOS[n] for n in args.scenarios if target.serves(SCENARIOS[n])] or [SCENARIOS["chat"]]
                await self.soak(target, scenarios, args.soak, max(args.concurrency))
        checks = {t.name: await self.metering_check(t) for t in paywares}
        for target in paywares:
            if target.variant.counters != "memory":
                target.facts["redis_keys_deleted"] = await self.forget_redis_keys(target.variant)
        for client in self.redis.values():
            await client.aclose()
        return {"cases": cases, "metering_check": checks,
                "servers": {t.name: {"pid": t.child.pid, **t.facts} for t in self.targets[1:]}}


# ---------------------------------------------------------------------------- summaries

def summarize_case(scenario: Scenario, concurrency: int, blocks: list[dict], targets: list[Target]) -> dict:
    rows = {}
    for target in targets:
        own = [b for b in blocks if b["target"] == target.name]
        n = sum(len(b["latencies_ns"]) for b in own)
        server = target.child.name
        cpu = sum(b["cpu_ns"][server] for b in own)
        ticks = sum(b["cpu_ns"][server + ":ticks"] for b in own)
        row = {"name": target.name, "kind": target.kind,
               **latency_stats([x for b in own for x in b["latencies_ns"]], sum(b["seconds"] for b in own)),
               # the server's own CPU: the proxy's, or for "direct" the upstream's
               "cpu_us_per_req": cpu / n / 1e3,
               # the share of one core the server used while loaded: at c > 1 a server well below
               # 100 % was not the bottleneck (the load side was), so it ran at a lower load
               "busy": cpu / 1e9 / max(1e-9, sum(b["seconds"] for b in own)),
               "cpu_us_per_req_ticks": ticks / n / CLK_TCK * 1e6,
               "cpu_sys_share": sum(b["cpu_ns"][server + ":sys_ticks"] for b in own) / max(1, ticks),
               # what this server burnt during the other targets' blocks (idle timers; a flush
               # the settle pause missed), not charged to its requests
               "cpu_ns_outside_own_blocks": sum(b["cpu_ns"][server] for b in blocks if b["target"] != target.name),
               "upstream_cpu_us_per_req": sum(b["cpu_ns"]["upstream"] for b in own) / n / 1e3,
               "client_cpu_us_per_req": sum(b["cpu_ns"]["client"] for b in own) / n / 1e3,
               "round_cpu_us_per_req": [b["cpu_ns"][server] / len(b["latencies_ns"]) / 1e3 for b in own],
               "blocks": [{k: v for k, v in b.items() if k not in ("latencies_ns", "target")}
                          | {"requests": len(b["latencies_ns"]), "seconds": round(b["seconds"], 4)} for b in own]}
        if any("redis_calls" in b for b in own):
            calls: dict[str, int] = {}
            for b in own:
                for name, value in b.get("redis_calls", {}).items():
                    calls[name] = calls.get(name, 0) + value
            row["redis_calls_per_req"] = {k: round(v / n, 3) for k, v in sorted(calls.items())}
            row["redis_cpu_us_per_req"] = sum(b.get("redis_cpu_ns", 0) for b in own) / n / 1e3
            row["redis_round_trips_per_req"] = round(sum(b.get("redis_reads", 0) for b in own) / n, 3)
        rows[target.name] = row
    direct, reference = rows["direct"], rows["reference"]
    for row in rows.values():
        if row["kind"] != "direct":
            row["added_p50_ms"] = row["p50_ms"] - direct["p50_ms"]
            row["added_p99_ms"] = row["p99_ms"] - direct["p99_ms"]
        if row["kind"] == "payware":
            row["ratio"] = row["cpu_us_per_req"] / reference["cpu_us_per_req"]
            per_round = [a / b for a, b in zip(row["round_cpu_us_per_req"], reference["round_cpu_us_per_req"])]
            row["round_ratios"] = [round(r, 3) for r in per_round]
            row["ratio_min"], row["ratio_max"], row["ratio_median"] = min(per_round), max(per_round), median(per_round)
    return {"scenario": scenario.name, "path": scenario.path, "stream": scenario.stream, "concurrency": concurrency,
            "targets": rows}


# ---------------------------------------------------------------------------- main

def variants_of(args, run_id: str) -> list[Variant]:
    """memory counters always; each --counters URL too; each with a capped customer under --limits."""
    backends = ["memory"] + [url for url in dict.fromkeys(args.counters) if url != "memory"]
    out = []
    for counters in backends:
        for limits in ((False, True) if args.limits else (False,)):
            i = len(out)
            out.append(Variant(counters=counters, limits=limits, customer=f"bench-{run_id}-{i}",
                               key=f"pw-bench-{run_id}-{i}-0123456789abcdef"))
    if args.litellm:
        i = len(out)
        out.append(Variant(counters="memory", limits=False, customer=f"bench-{run_id}-{i}",
                           key=f"pw-bench-{run_id}-{i}-0123456789abcdef", litellm=True))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Payware against a reference pass-through, side by side "
                                            "(bench/README.md explains the method).")
    p.add_argument("--quick", action="store_true", help="a smoke run: few requests, seconds")
    p.add_argument("--requests", type=int, help="measured requests per target and case at concurrency > 1 "
                                                "(default 5000; --quick 300)")
    p.add_argument("--requests-c1", type=int, help="the same at concurrency 1 (default 2000; --quick 150)")
    p.add_argument("--warmup", type=int, help="warm-up requests per target and case (default 200; --quick 30)")
    p.add_argument("--rounds", type=int, help="interleaved rounds per case, each with one block per target; "
                                              "a multiple of 4 balances order and cores (default 4; --quick 2)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 64], help="closed-loop workers (default 1 64)")
    p.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=DEFAULT_SCENARIOS,
                   help=f"rows of bench/scenarios.py (default {' '.join(DEFAULT_SCENARIOS)})")
    p.add_argument("--limits", action="store_true",
                   help="also a Payware whose customer has a hard cap and RPM/TPM limits, never reached")
    p.add_argument("--litellm", action="store_true",
                   help="also a Payware whose config adds a kind: litellm provider (model claude-bench, the "
                        "upstream's Anthropic route): it alone serves the litellm-* scenarios")
    p.add_argument("--counters", nargs="+", default=[], metavar="URL",
                   help="also a Payware on these counters (redis://host:port/db: the run's keys are deleted "
                        "at the end); memory counters are always measured")
    p.add_argument("--proxy-args", default="", metavar="ARGS",
                   help="extra flags for `payware serve`, one shell-quoted string, e.g. \"--workers 2\"")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="`payware serve --workers N` for the Payware on Redis counters (memory counters: always "
                        "1); compare req/s with --pin none")
    p.add_argument("--pin", choices=["swap", "none"], default="swap",
                   help="swap (default): the server under test alone on one core, the rest on the others, "
                        "cores swapped every two rounds; none: no affinity (for --workers N)")
    p.add_argument("--soak", type=int, default=0, metavar="N",
                   help="after the cases, N more requests through each Payware, then its RSS (e.g. 100000)")
    p.add_argument("--settle", type=float, default=0.3,
                   help="seconds after each block still counted in its CPU (Payware's ledger flushes every 0.2 s)")
    p.add_argument("--idle", type=float, default=1.0, help="seconds idle before reading memory (default 1)")
    p.add_argument("--max-seconds", type=float, default=900, help="abort after this long (default 900)")
    p.add_argument("--no-ledger-check", action="store_true", help="check the summary only, not the ledger's events")
    p.add_argument("--proxy-root", type=Path, default=ROOT,
                   help="the checkout whose Payware to run (default: this one), e.g. a `git archive` snapshot")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, ledgers)")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="directory for the JSON result")
    args = p.parse_args(argv)
    args.requests = args.requests or (300 if args.quick else 5000)
    args.requests_c1 = args.requests_c1 or (150 if args.quick else 2000)
    args.warmup = args.warmup if args.warmup is not None else (30 if args.quick else 200)
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.proxy_root = args.proxy_root.resolve()
    if min(args.concurrency) < 1 or min(args.requests, args.requests_c1) < args.rounds or args.warmup < 0:
        p.error("concurrency must be >= 1, requests >= rounds, warmup >= 0")
    if max(args.concurrency) > 512 or max(args.requests, args.requests_c1) > 200_000 or args.soak > 10_000_000:
        p.error("bounded: concurrency <= 512, requests <= 200000, soak <= 10000000")
    if any(SCENARIOS[name].litellm for name in args.scenarios) and not args.litellm:
        p.error("the litellm-* scenarios need --litellm (the Payware that has a litellm provider)")
    if any(not url.startswith(("redis://", "rediss://", "unix://")) for url in args.counters if url != "memory"):
        p.error("--counters takes redis:// URLs (memory counters are always measured)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 (progress on stderr, table on stdout)
    tmp = Path(tempfile.mkdtemp(prefix="payware-bench-"))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))  # same clean-up as Ctrl-C
    started = datetime.now(timezone.utc)
    load_before = loadavg()
    bench = Bench(args, log)
    try:
        bench.start(tmp, variants_of(args, secrets.token_hex(3)))
        report = run_loop(bench.run())
        report.update({
            "started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(),
            "wall_s": round((datetime.now(timezone.utc) - started).total_seconds(), 1),
            "git": git_rev(args.proxy_root),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "scenarios": {n: {"path": SCENARIOS[n].path, "stream": SCENARIOS[n].stream,
                              "answer": SCENARIOS[n].answer} for n in args.scenarios},
            "pinning": {"mode": args.pin, "cores": bench.cores},
            "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": loadavg(),
                        "python": platform.python_version(), "aiohttp": aiohttp.__version__,
                        "platform": platform.platform()},
        })
        args.out.mkdir(parents=True, exist_ok=True)
        out = args.out / (started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "") + ".json")
        out.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(markdown(report))
        log(f"bench: {report['wall_s']} s; JSON written to {out}")
        return 0 if all(c["ok"] for c in report["metering_check"].values()) else 1
    except KeyboardInterrupt:
        log("bench: interrupted")
        return 130
    except (BenchError, RuntimeError, aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        log(f"bench: FAILED: {type(exc).__name__}: {exc}")
        for child in bench.children:
            if not child.alive():
                log(f"--- {child.name} exited with {child.proc.returncode}; log tail:\n{child.log_tail()}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for child in reversed(bench.children):
            child.stop()
        if args.keep:
            log(f"bench: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_loop(coro):
    """The load client's loop: uvloop when installed, as the servers use, so the client is cheap."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def git_rev(root: Path) -> str:
    if not (root / ".git").exists():
        return f"{root} (not a git checkout)"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


if __name__ == "__main__":
    sys.exit(main())
