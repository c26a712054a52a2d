"""`payware serve --workers N`: several processes on one port, one journal each, shared counters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import KEYS, ROOT, free_port, proxy_config, python_env, wait_http

BODY = json.dumps({"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}).encode()


def chat(url: str) -> str:
    request = urllib.request.Request(url + "/v1/chat/completions", data=BODY, method="POST",
                                     headers={"Authorization": f"Bearer {KEYS['acme']}",
                                              "Content-Type": "application/json", "Connection": "close"})
    with urllib.request.urlopen(request) as resp:
        return resp.headers["X-Payware-Request-Id"]


def summary(url: str) -> dict:
    request = urllib.request.Request(url + "/v1/usage/summary", headers={"Authorization": f"Bearer {KEYS['acme']}"})
    with urllib.request.urlopen(request) as resp:
        return json.loads(resp.read())


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]


@pytest.fixture
def redis_db(redis_url) -> str:
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/3"
    redis.Redis.from_url(url).flushdb()
    return url


def start(config: Path, port: int, workers: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--port", str(port),
                             "--workers", str(workers)], cwd=ROOT, env=python_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_workers_share_one_port_and_the_counters(tmp_path, fake_upstream, redis_db):
    config = tmp_path / "payware.yaml"
    config.write_text(proxy_config(fake_upstream.url, tmp_path, storage=f"  counters: {redis_db}"))
    port = free_port()
    proc = start(config, port, 2)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", proc=proc)
        pids = worker_pids(proc.pid)
        assert len(pids) == 2
        with ThreadPoolExecutor(8) as pool:  # new connections: the kernel spreads them over the workers
            ids = list(pool.map(lambda _: chat(url), range(40)))
        assert len(set(ids)) == 40
        assert summary(url)["requests"] == 40  # every worker's calls, whichever worker answers
        journals = sorted(p.name for p in tmp_path.glob("payware.journal.w*"))
        assert journals == ["payware.journal.w0", "payware.journal.w1"]
        os.kill(pids[0], signal.SIGKILL)  # a worker dies: the supervisor starts it again
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(worker_pids(proc.pid)) < 2 or pids[0] in worker_pids(proc.pid)):
            time.sleep(0.1)
        assert len(worker_pids(proc.pid)) == 2
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: chat(url), range(10)))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "2 workers" in out
    # the next start, with one worker, replays the two workers' journals first
    proc = start(config, port, 1)
    try:
        wait_http(url + "/healthz", proc=proc)
        assert summary(url)["requests"] == 50
        assert not [p for p in tmp_path.glob("payware.journal.w*") if p.stat().st_size]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)


def test_memory_counters_with_more_than_one_worker_are_refused(tmp_path, fake_upstream):
    config = tmp_path / "payware.yaml"
    config.write_text(proxy_config(fake_upstream.url, tmp_path))
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config), "--port",
                             str(free_port()), "--workers", "2"], cwd=ROOT, env=python_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "storage.counters: memory cannot be shared by 2 workers" in result.stderr
