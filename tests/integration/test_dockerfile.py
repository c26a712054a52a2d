"""The Dockerfile runs the same `payware serve` the tests run (no Docker engine here).

We cannot build the image, so we check what it would run: its entrypoint, its user, its
health check, that the package it installs carries the default config, and that the
environment it sets starts a working proxy whose health check passes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile

from tests.conftest import ROOT, free_port, python_env, wait_http

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instruction(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]


def image_env() -> dict[str, str]:
    block = re.search(r"^ENV (.*?)(?=^\S)", DOCKERFILE, re.S | re.M).group(1)
    return dict(re.findall(r"(\w+)=(\S+)", block))


def test_the_image_runs_payware_serve_as_a_non_root_user():
    entry = json.loads(instruction("ENTRYPOINT")[-1]) + json.loads(instruction("CMD")[-1])
    assert entry == ["payware", "serve"]
    user = instruction("USER")[-1]
    assert user not in ("root", "0")
    assert re.search(r"useradd .*--uid 10001 .*" + user, DOCKERFILE)


def test_the_package_the_image_installs_carries_the_default_config(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, env=python_env())
    wheel, = tmp_path.glob("payware-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "config/default.yaml" in names
    assert {"proxy/cli/main.py", "metering/store/ledger.py", "config/loader.py", "metering/store/migrations/env.py",
            "metering/store/migrations/versions/0001_initial.py"} <= set(names)
    assert not any(n.startswith("tests/") for n in names)


def test_the_image_environment_starts_a_proxy_whose_healthcheck_passes(tmp_path):
    env = image_env()
    assert env["PAYWARE_HOST"] == "0.0.0.0"
    port = free_port()
    # The image's settings, with its volume paths moved under tmp and the host kept on loopback.
    overrides = {**env, "PAYWARE_HOST": "127.0.0.1", "PAYWARE_PORT": str(port),
                 "PAYWARE_LEDGER": f"sqlite:///{tmp_path}/payware.db", "PAYWARE_JOURNAL": f"{tmp_path}/payware.journal"}
    overrides.pop("PATH")
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve"], cwd=tmp_path,
                            env=python_env() | overrides, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        check = json.loads(re.search(r"^HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])$", DOCKERFILE, re.M).group(1))
        assert check[0] == "python"
        result = subprocess.run([sys.executable, *check[1:]], env=python_env() | {"PAYWARE_PORT": str(port)},
                                timeout=10)
        assert result.returncode == 0
    finally:
        proc.terminate()
        proc.wait(15)
