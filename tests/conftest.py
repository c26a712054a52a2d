"""Shared fixtures: real server processes (fake provider, proxy) and real Redis/Postgres."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import urllib.request

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "admin-key-0123456789"
KEYS = {"acme": "pw-test-acme-key", "globex": "pw-test-globex-key"}


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return env


# Builds and starts the app as `payware serve` does (every start-up context runs), then counts a
# package's modules; it leaves at once (nothing to clean up in a throw-away folder).
_MODULES_PROBE = """
import asyncio, os, sys
from aiohttp import web
from config.loader import load_config
from proxy.app import make_app

async def main():
    await web.AppRunner(make_app(load_config(sys.argv[1]))).setup()
    package = sys.argv[2]
    print(sum(1 for name in sys.modules if name == package or name.startswith(package + ".")), flush=True)
    os._exit(0)

asyncio.run(main())
"""


def modules_at_start_up(config_path: Path, package: str, env: dict[str, str] | None = None) -> int:
    """How many of `package`'s modules a proxy on `config_path` has imported once it started."""
    done = subprocess.run([sys.executable, "-c", _MODULES_PROBE, str(config_path), package], cwd=ROOT,
                          env=env if env is not None else python_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@dataclass
class FakeUpstream:
    """The fake provider as a separate server process (tests/fakes/upstream.py)."""

    proc: subprocess.Popen
    url: str  # ends in /v1

    def stats(self) -> dict:
        import json

        with urllib.request.urlopen(self.url.removesuffix("/v1") + "/_stats") as resp:
            return json.loads(resp.read())

    def reset(self) -> None:
        req = urllib.request.Request(self.url.removesuffix("/v1") + "/_reset", method="POST", data=b"")
        urllib.request.urlopen(req).read()


def start_fake_upstream() -> FakeUpstream:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.upstream", "--port", "0"], cwd=ROOT,
                            env=python_env(), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"fake upstream did not start: {line!r}")
    base = line.split()[1].rstrip("/")
    return FakeUpstream(proc=proc, url=base + "/v1")


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    upstream = start_fake_upstream()
    yield upstream
    upstream.proc.terminate()
    upstream.proc.wait(10)


def proxy_config(upstream_url: str, tmp: Path, *, extra_models: str = "", customers: str | None = None,
                 storage: str = "", plans: str | None = None, ledger: str | None = None,
                 webhooks: str = "", server: str = "", extra_providers: str = "") -> str:
    """A config for the tests: the fake provider, two customers, storage under `tmp`."""
    models = "\n".join(
        f"  {name}: {{provider: fake, cost: {{input: \"0.15\", cached_input: \"0.075\", output: \"0.60\"}}}}"
        for name in ("fake-ok", "fake-no-usage", "fake-finish-usage", "fake-crlf", "fake-split", "fake-slow",
                     "fake-error-500-text", "fake-error-429", "fake-error-400", "fake-hang", "fake-stream-error",
                     "fake-cut", "fake-bad-usage", "fake-ignores-stream"))
    customers = customers if customers is not None else f"""
  acme: {{plan: payg, keys: ["{key_hash(KEYS['acme'])}"]}}
  globex: {{plan: payg, keys: ["{key_hash(KEYS['globex'])}"]}}
"""
    plans = plans if plans is not None else '  payg: {interval: monthly, price: {markup: "1.25"}}\n'
    return f"""
server: {{host: 127.0.0.1, admin_key: "{ADMIN_KEY}", max_body_bytes: 65536, read_timeout: 5, statement_grace: 0{server}}}
storage:
  ledger: {ledger or f"sqlite:///{tmp}/ledger.db"}
  journal: {tmp}/payware.journal
  flush_interval: 0.05
{storage}
providers:
  fake: {{kind: openai, base_url: "{upstream_url}", api_key: "sk-real-provider-secret"}}
  fake-anthropic: {{kind: anthropic, base_url: "{upstream_url.removesuffix('/v1')}", api_key: "sk-ant-real-provider-secret"}}
  fake-gemini: {{kind: gemini, base_url: "{upstream_url.removesuffix('/v1')}", api_key: "AIza-real-provider-secret-0123456789"}}
{extra_providers}models:
{models}
  fake-embed: {{provider: fake, upstream: fake-ok, mode: embedding, cost: {{input: "0.02"}}}}
  renamed: {{provider: fake, upstream: fake-ok, cost: {{input: "0.15", output: "0.60"}}}}
{extra_models}
plans:
{plans}
customers:
{customers}
{webhooks}
"""


@dataclass
class ProxyProcess:
    """`payware serve` as a real process; `kill()` is a SIGKILL, `start()` a restart."""

    config_path: Path
    port: int
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    extra_env: dict = field(default_factory=dict)
    workers: int = 1  # one process, whatever the counters: tests kill and signal it by its pid
    module: str = "proxy.cli"  # what runs `serve` (tests.fakes.clock_serve: on a moved clock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = python_env() | self.extra_env
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "serve", "--config", str(self.config_path), "--port", str(self.port),
             "--workers", str(self.workers)],
            cwd=ROOT, env=env, stdout=log, stderr=log)
        wait_http(self.url + "/healthz", proc=self.proc)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


@pytest.fixture
def proxy_factory(tmp_path, fake_upstream) -> Iterator:
    started: list[ProxyProcess] = []

    def make(config_text: str | None = None, *, name: str = "proxy", **config_kwargs) -> ProxyProcess:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        path = folder / "payware.yaml"
        path.write_text(config_text or proxy_config(fake_upstream.url, folder, **config_kwargs))
        proxy = ProxyProcess(config_path=path, port=free_port(), log_path=folder / "proxy.log")
        proxy.start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(proxy_factory) -> ProxyProcess:
    return proxy_factory()


def _service_url(name: str) -> str:
    url = os.environ.get(f"PAYWARE_TEST_{name}_URL")
    if not url:
        if os.environ.get("PAYWARE_REQUIRE_SERVICES"):
            pytest.fail(f"PAYWARE_TEST_{name}_URL is not set but services are required (run bash .ci/run)")
        pytest.skip(f"no {name.lower()} server: run the suite with bash .ci/run")
    return url


@pytest.fixture
def redis_url() -> str:
    return _service_url("REDIS")


@pytest.fixture(params=["memory", "redis"])
def counters_storage(request) -> str:
    """The storage lines of a proxy on memory counters, or on database 5 of the test Redis (emptied)."""
    if request.param == "memory":
        return ""
    import redis

    url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(url).flushdb()
    return f"  counters: {url}"


@pytest.fixture
def postgres_url() -> str:
    return _service_url("POSTGRES")
