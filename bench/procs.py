"""The bench's child processes and what it reads of them: start, stop, CPU, memory, pinning.

Children: the upstream (bench/upstream.py), the reference pass-through (bench/passthrough.py)
and one Payware per variant (`python -m proxy.cli serve` with a generated config). Each gets
its own process group and SIGTERM when the bench dies, even by SIGKILL (`PR_SET_PDEATHSIG`).

CPU is read from `/proc/<pid>/task/*/schedstat` (ns on CPU, every live thread) of a process and
its descendants (a server with `--workers` forks), so it counts only that process tree's own
work; `/proc/<pid>/stat` utime+stime (clock ticks, dead threads included) is kept as a
cross-check.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
ADMIN_KEY = "bench-admin-key-0123456789"
PROVIDER_KEY = "sk-bench-dummy-provider-key"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _die_with_parent() -> None:
    """Child side: get SIGTERM if the bench process dies (even by SIGKILL); own process group."""
    os.setpgid(0, 0)  # Ctrl-C reaches only the bench; it stops the children itself
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def env_for(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return env


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    url: str = ""
    started_at: float = 0.0  # time.perf_counter() just before the spawn

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self, parents: dict[int, list[int]] | None = None) -> list[int]:
        """This process and its descendants (workers), alive now; `parents` from `parents_map()`."""
        return process_tree(self.pid, parents)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGINT (Payware drains its recorder on it), then SIGKILL of the group after 15 s."""
        if not self.alive():
            return
        try:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass


def spawn(name: str, argv: list[str], tmp: Path, *, cwd: Path = ROOT, url: str = "",
          stdout=None) -> Child:
    log_path = tmp / f"{name}.log"
    log = open(log_path, "wb")
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env_for(cwd), stdout=stdout or log,
                            stderr=log if stdout else subprocess.STDOUT, preexec_fn=_die_with_parent,
                            text=stdout is not None)
    log.close()  # the child holds its own descriptor
    return Child(name, proc, log_path, url, started)


def start_upstream(tmp: Path) -> Child:
    child = spawn("upstream", [python(), str(BENCH / "upstream.py"), "--host", HOST, "--port", "0"], tmp,
                  stdout=subprocess.PIPE)
    line = child.proc.stdout.readline().strip()  # bounded: the child dies with an error if it cannot bind
    if not line.startswith("LISTENING "):
        child.stop()
        raise RuntimeError(f"upstream did not start: {line!r}\n{child.log_tail()}")
    child.url = line.split()[1]
    return child


def spawn_reference(tmp: Path, upstream_url: str) -> Child:
    port = free_port()
    return spawn("reference", [python(), str(BENCH / "passthrough.py"), "--upstream", upstream_url,
                               "--host", HOST, "--port", str(port)], tmp, url=f"http://{HOST}:{port}")


@dataclass(frozen=True)
class Variant:
    """One Payware process: its counters and whether its customer has a cap and rate limits."""

    counters: str  # "memory" or a redis:// URL
    limits: bool
    customer: str
    key: str
    litellm: bool = False  # its config also has a `kind: litellm` provider (litellm imported at start-up)

    @property
    def name(self) -> str:
        return ("payware" + ("+limits" if self.limits else "") + ("+litellm" if self.litellm else "")
                + ("" if self.counters == "memory" else "@redis"))


def payware_config(variant: Variant, upstream_v1: str, tmp: Path) -> str:
    """Payware's config: the upstream as a provider of each kind Payware speaks natively (OpenAI,
    Anthropic, Gemini; the latter two on its root, as their APIs' base URLs are), one model on
    each with a `cost:` block (so no price is looked up at run time), one customer, plan `payg`."""
    root = upstream_v1.removesuffix("/v1")
    extra = ""
    if variant.limits:  # never reached: admission does its work (prompt counting, reservation, limits)
        extra = ('    cap: {amount: "1000000.00", action: block, mode: hard}\n'
                 "    rate_limit: {rpm: 10000000, tpm: 1000000000}\n")
    provider, model = "", ""
    if variant.litellm:  # the upstream's Anthropic route, reached through litellm's library
        provider = f'  litellm: {{kind: litellm, base_url: "{root}", api_key: "{PROVIDER_KEY}"}}\n'
        model = ("  claude-bench:\n    provider: litellm\n    upstream: anthropic/claude-sonnet-4-5\n"
                 '    cost: {input: "3.00", cached_input: "0.30", output: "15.00"}\n')
    return f"""# generated by bench/run.py
server: {{host: {HOST}, admin_key: "{ADMIN_KEY}"}}
storage:
  ledger: sqlite:///{tmp}/ledger.db
  journal: {tmp}/payware.journal
  counters: {variant.counters}
providers:
  upstream: {{kind: openai, base_url: "{upstream_v1}", api_key: "{PROVIDER_KEY}"}}
  anthropic: {{kind: anthropic, base_url: "{root}", api_key: "{PROVIDER_KEY}"}}
  gemini: {{kind: gemini, base_url: "{root}", api_key: "{PROVIDER_KEY}"}}
{provider}models:
  gpt-4o-mini:
    provider: upstream
    cost: {{input: "0.15", cached_input: "0.075", output: "0.60"}}
  claude-sonnet-4-5:
    provider: anthropic
    cost: {{input: "3.00", cached_input: "0.30", cache_write: "3.75", cache_write_1h: "6.00", output: "15.00"}}
  gemini-2.5-flash:
    provider: gemini
    cost: {{input: "0.30", cached_input: "0.03", output: "2.50"}}
{model}plans:
  payg: {{interval: monthly, price: {{markup: "1.25"}}}}
customers:
  {variant.customer}:
    plan: payg
    keys: ["{key_hash(variant.key)}"]
{extra}"""


def spawn_payware(tmp: Path, variant: Variant, upstream_url: str, *, root: Path, extra_args: str,
                  workers: int = 1) -> Child:
    home = tmp / variant.name
    home.mkdir()
    config = home / "payware.yaml"
    config.write_text(payware_config(variant, upstream_url + "/v1", home))
    port = free_port()
    extra = shlex.split(extra_args)
    if not any(arg.startswith("--workers") for arg in extra):
        # NOTE: one process by default, as the reference is (`serve` would start one worker per
        # core on Redis counters, and a ratio compares one process's CPU on one pinned core);
        # memory counters cannot be shared by workers, so their Payware always has one
        extra = ["--workers", str(1 if variant.counters == "memory" else workers), *extra]
    argv = [python(), "-m", "proxy.cli", "serve", "--config", str(config), "--port", str(port), *extra]
    return spawn(variant.name, argv, tmp, cwd=root, url=f"http://{HOST}:{port}")


def first_answer(child: Child, url: str, body: bytes, headers: dict[str, str], timeout: float = 90) -> float:
    """Seconds from the spawn to the first 200 answer to `body` (retried while nothing listens)."""
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode} before serving\n{child.log_tail()}")
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                resp.read()
                return time.perf_counter() - child.started_at
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{child.name}: first request answered HTTP {exc.code}: {exc.read()[:300]!r}") from None
        except OSError:  # not listening yet
            if time.monotonic() > deadline:
                child.stop()
                raise RuntimeError(f"{child.name} did not answer within {timeout:.0f} s\n{child.log_tail()}") from None
            time.sleep(0.01)


# ---------------------------------------------------------------------------- /proc readings

def parents_map() -> dict[int, list[int]]:
    """ppid -> children pids, of every process (a scan of /proc: kernels without task/*/children)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    return parents


def process_tree(pid: int, parents: dict[int, list[int]] | None = None) -> list[int]:
    """`pid` and its live descendants."""
    parents = parents_map() if parents is None else parents
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, ()))
    return tree


def cpu_ns(pids: list[int]) -> int:
    """Nanoseconds on CPU, summed over the live threads of `pids` (schedstat's first field)."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                    total += int(fh.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that ended meanwhile
    return total


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime, stime) of one process (all threads, dead ones included), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0
    return int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)


def memory_kb(pids: list[int]) -> dict[str, int]:
    """VmRSS and VmHWM summed over `pids` (shared pages of forked workers counted in each)."""
    out = {"VmRSS": 0, "VmHWM": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith(("VmHWM:", "VmRSS:")):
                        name, value = line.split(":", 1)
                        out[name] += int(value.split()[0])
        except OSError:
            pass
    return out


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of `pids` may run only on `cpus` (threads started later inherit it)."""
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:
                pass  # a thread that ended meanwhile
