"""`payware serve --workers 2` against `--workers 1`: requests per second at c=64, with a load
side in C, so that it takes a small share of the same cores.

    .venv/bin/python bench/cores.py                        # chat and chat-stream, ~3 min
    .venv/bin/python bench/cores.py --scenarios chat --rounds 6 --seconds 8

`run.py --pin none --workers N` measures the same with the bench's Python load client and
upstream, which spend ~70 µs of CPU per chat request between them on the same two cores: with
Payware at ~370 µs a request, two workers can reach at most 2 × 370 / (370 + 70) ≈ 1.7x one,
whatever Payware does. Here the load is `wrk` (one thread, 64 connections) and the upstream
`nginx` (one process), both C: nginx answers with the bytes the bench upstream sends (captured
from it at the start), in one write per answer, a stream included. Even so the kernel's
loopback TCP makes wrk, nginx and Redis ~60 µs a request together: the table shows where each
core went, and Payware's own CPU per request with one worker and with two (equal: two workers
do twice the work of one on twice the CPU; the throughput ratio is what the machine leaves them).

Each Payware runs on Redis counters (in-process counters cannot be shared by workers; `serve`
refuses them with more than one), its own customer, pay-as-you-go, no cap; the two settings
alternate, rounds of `--seconds` each after a warm-up, nothing pinned. The run ends by checking
that each Payware's summary holds every request wrk completed (and at most the ones it cut off
at each round's end, which Payware bills as abandoned).

Needs `wrk` and `nginx` (Debian: `apt-get install wrk nginx-light`; installed here when missing
and run as root) and a Redis (`--counters`, default the test suite's on port 56379).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from procs import HOST, ROOT, Child, Variant, cpu_ns, first_answer, free_port, parents_map, spawn, spawn_payware
from procs import start_upstream
from scenarios import SCENARIOS

# What the upstream is asked (Payware forces usage on a stream: it is asked chat-stream-usage's body).
UPSTREAM_BODY = {"chat": "chat", "chat-stream": "chat-stream-usage"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", nargs="+", default=["chat", "chat-stream"], choices=sorted(UPSTREAM_BODY))
    p.add_argument("--counters", default="redis://127.0.0.1:56379/0", help="a redis:// URL (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=4, help="rounds of each setting, alternated (default 4)")
    p.add_argument("--seconds", type=int, default=8, help="seconds of load per round (default 8)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of load before the rounds (default 3)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    return p.parse_args(argv)


def ensure_tools() -> None:
    missing = [name for name in ("wrk", "nginx") if shutil.which(name) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        packages = ["nginx-light" if name == "nginx" else name for name in missing]
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
        missing = [name for name in missing if shutil.which(name) is None]
    if missing:
        sys.exit(f"bench/cores.py needs {' and '.join(missing)} (Debian: apt-get install wrk nginx-light)")


def capture(upstream_url: str, scenario_name: str) -> tuple[bytes, str]:
    """The bench upstream's answer (body, content type) to what Payware asks it for `scenario_name`."""
    scenario = SCENARIOS[UPSTREAM_BODY[scenario_name]]
    request = urllib.request.Request(upstream_url + scenario.path, data=scenario.body, method="POST",
                                     headers=scenario.request_headers("sk-bench"))
    with urllib.request.urlopen(request, timeout=10) as resp:
        return resp.read(), resp.headers.get("Content-Type", "application/json")


def start_nginx(tmp: Path, answers: dict[str, tuple[bytes, str]]) -> tuple[Child, dict[str, str]]:
    """One nginx process with a server per scenario, each answering its canned bytes to a POST."""
    servers, urls = [], {}
    for name, (body, content_type) in answers.items():
        port = free_port()
        urls[name] = f"http://{HOST}:{port}"
        root = tmp / f"nginx-{name}"
        (root / "v1/chat").mkdir(parents=True)
        (root / "v1/chat/completions").write_bytes(body)
        # NOTE: nginx answers a POST to a file with 405; error_page turns it into the file (as a GET)
        servers.append(f"""
  server {{
    listen {HOST}:{port};
    root {root};
    types {{ }}
    default_type {content_type.split(';')[0]};
    location / {{ error_page 405 =200 $uri; }}
  }}""")
    conf = tmp / "nginx.conf"
    conf.write_text(f"""daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  client_body_temp_path {tmp}/nginx-body;
  client_body_buffer_size 64k;
{''.join(servers)}
}}
""")
    child = spawn("nginx", ["nginx", "-p", str(tmp), "-c", str(conf)], tmp)
    deadline = time.monotonic() + 10
    for url in urls.values():
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(url + "/v1/chat/completions", data=b"{}"), timeout=1)
                break
            except OSError:
                if not child.alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start:\n{child.log_tail()}") from None
                time.sleep(0.05)
    return child, urls


def wrk_script(tmp: Path, name: str, key: str) -> Path:
    scenario = SCENARIOS[name]
    body = tmp / f"{name}.body"
    body.write_bytes(scenario.body)
    lines = [f'local f = io.open("{body}", "rb")', "wrk.body = f:read(\"*a\")", "f:close()", 'wrk.method = "POST"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in scenario.request_headers(key).items()]
    script = tmp / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.lua"
    script.write_text("\n".join(lines) + "\n")
    return script


def run_wrk(url: str, script: Path, seconds: int, concurrency: int) -> dict:
    """One wrk run; its result, with the CPU seconds wrk itself used (`cpu`)."""
    proc = subprocess.Popen(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script),
                             url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text, err = proc.stdout.read(), proc.stderr.read()
    if proc.returncode != 0 or "Requests/sec" not in text:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {text}\n{err}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    if bad or errors:
        raise RuntimeError(f"wrk saw failures: {(bad or errors).group(0)}\n{text}")
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "requests": int(re.search(r"(\d+) requests in", text).group(1)),
            "p50": latency.get("50"), "p99": latency.get("99"), "cpu": usage.ru_utime + usage.ru_stime}


def redis_pid(url: str) -> int | None:
    """The Redis server's pid (INFO's process_id), to read its CPU; None if it is not on this host."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return pid if os.path.exists(f"/proc/{pid}") else None


def summary_requests(child: Child, key: str) -> int:
    request = urllib.request.Request(child.url + "/v1/usage/summary", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return int(json.load(resp)["requests"])


def main(argv=None) -> int:
    args = parse_args(argv)
    ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="payware-cores-"))
    children: list[Child] = []
    try:
        upstream = start_upstream(tmp)
        children.append(upstream)
        answers = {name: capture(upstream.url, name) for name in args.scenarios}
        upstream.stop()
        nginx, urls = start_nginx(tmp, answers)
        children.append(nginx)
        redis_server = redis_pid(args.counters)
        others = [nginx.pid] + ([redis_server] if redis_server else [])
        report = []
        for name in args.scenarios:
            scenario = SCENARIOS[name]
            paywares = {}
            for workers in (1, 2):
                key = f"pw-cores-{name}-{workers}-{os.getpid()}-0123456789abcdef"
                customer = f"cores-{name}-{workers}-{os.getpid()}"
                variant = Variant(counters=args.counters, limits=False, customer=customer, key=key)
                child = spawn_payware(_home(tmp, name, workers), variant, urls[name], root=ROOT,
                                      extra_args=f"--workers {workers}")
                children.append(child)
                first_answer(child, child.url + scenario.path, scenario.body, scenario.request_headers(key))
                paywares[workers] = (child, key, wrk_script(tmp, name, key))
            completed = {1: 1, 2: 1}  # first_answer's request
            for workers, (child, key, script) in paywares.items():
                warmup = run_wrk(child.url + scenario.path, script, args.warmup, args.concurrency)
                completed[workers] += warmup["requests"]
            rounds = {1: [], 2: []}
            cpu = {1: [], 2: []}
            for _ in range(args.rounds):
                for workers, (child, key, script) in paywares.items():
                    parents = parents_map()
                    tree = child.pids(parents)
                    before = (cpu_ns(tree), cpu_ns([nginx.pid]), cpu_ns(others[1:]), time.perf_counter())
                    result = run_wrk(child.url + scenario.path, script, args.seconds, args.concurrency)
                    elapsed = time.perf_counter() - before[3]
                    completed[workers] += result["requests"]
                    rounds[workers].append(result)
                    cpu[workers].append(((cpu_ns(child.pids()) - before[0]) / 1e9 / elapsed,
                                         (cpu_ns([nginx.pid]) - before[1]) / 1e9 / elapsed,
                                         result["cpu"] / elapsed,
                                         (cpu_ns(others[1:]) - before[2]) / 1e9 / elapsed))
            time.sleep(1.0)  # the ledger flushes; the summary reads the counters
            for workers, (child, key, _) in paywares.items():
                seen = summary_requests(child, key)
                cut_at_most = (args.rounds + 1) * args.concurrency  # in flight when wrk stopped, billed as abandoned
                if not completed[workers] <= seen <= completed[workers] + cut_at_most:
                    raise RuntimeError(f"{name} --workers {workers}: wrk completed {completed[workers]} requests, "
                                       f"the summary holds {seen}")
            report.append((name, rounds, cpu, completed))
            for child, _, _ in paywares.values():
                child.stop()
        _print(report, args)
        return 0
    finally:
        for child in reversed(children):
            child.stop()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _home(tmp: Path, name: str, workers: int) -> Path:
    """A directory per Payware (spawn_payware names its home after the variant, the same for both)."""
    home = tmp / f"{name}-w{workers}"
    home.mkdir()
    return home


def _print(report, args) -> None:
    print(f"\nrequests per second, c={args.concurrency}, wrk (1 thread) -> Payware on Redis counters -> nginx; "
          f"{args.rounds} alternated rounds of {args.seconds} s; nothing pinned; {os.cpu_count()} cores\n")
    print("| scenario | --workers 1, req/s | --workers 2, req/s | ratio (medians) | Payware's CPU µs/request, 1 / 2 (per core: 2 vs 1) | "
          "cores used 1 / 2: Payware, wrk, nginx, Redis | p50 / p99, 1 | p50 / p99, 2 |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for name, rounds, cpu, _ in report:
        one = [r["rps"] for r in rounds[1]]
        two = [r["rps"] for r in rounds[2]]
        used = {w: [statistics.median(c[i] for c in cpu[w]) for i in range(4)] for w in (1, 2)}
        per_request = {w: statistics.median(c[0] / r["rps"] * 1e6 for c, r in zip(cpu[w], rounds[w])) for w in (1, 2)}
        lat = {w: f"{rounds[w][len(rounds[w]) // 2]['p50']} / {rounds[w][len(rounds[w]) // 2]['p99']}" for w in (1, 2)}
        shares = " / ".join(", ".join(f"{v:.2f}" for v in used[w]) for w in (1, 2))
        print(f"| {name} | {_cells(one)} | {_cells(two)} | {statistics.median(two) / statistics.median(one):.2f}x | "
              f"{per_request[1]:.0f} / {per_request[2]:.0f} ({per_request[1] / per_request[2]:.2f}) | {shares} | {lat[1]} | {lat[2]} |")
    print("\nPer core: requests a second per core Payware used, 2 workers against 1 (1.00: two workers do twice one's "
          "work on twice its CPU).\nEvery request wrk completed is in its Payware's summary.")


def _cells(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}–{max(values):,.0f}]"


if __name__ == "__main__":
    sys.exit(main())
