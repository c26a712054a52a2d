"""deploy/: the compose topology and its config, checked without a Docker engine.

The compose file is parsed and held to what deploy/README.md promises; the config it mounts is
validated by `payware check-config` in exactly the environment the compose file gives a replica;
and the topology runs here with real processes: two `payware serve` on the same config file,
the test PostgreSQL and Redis, sharing customers and usage.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import psycopg
import pytest
import yaml

from tests.conftest import ROOT, free_port, python_env, wait_http

DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
# What an operator exports before `docker compose up` (test values).
OPERATOR_ENV = {"PAYWARE_ADMIN_KEY": "admin-key-for-the-deploy-test", "OPENAI_API_KEY": "sk-deploy-test",
                "POSTGRES_PASSWORD": "pgpassword0123"}
_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, as `docker compose` expands them."""

    def one(match: re.Match) -> str:
        name, op, arg = match.groups()
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"compose would refuse to start: {name}: {arg}")
        return arg if op else ""

    return _COMPOSE_VAR.sub(one, value)


def paywares() -> dict[str, dict]:
    return {name: s for name, s in SERVICES.items() if s.get("entrypoint", [])[:1] == ["payware"]}


def container_env(service: dict, operator: dict[str, str] = OPERATOR_ENV) -> dict[str, str]:
    return {name: interpolate(str(value), operator) for name, value in service["environment"].items()}


def check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in python_env().items() if k in ("PATH", "PYTHONPATH", "HOME", "LANG",
                                                             "LITELLM_LOCAL_MODEL_COST_MAP")}
    return subprocess.run([sys.executable, "-m", "proxy.cli.main", "check-config", str(path)], cwd=ROOT,
                          env=base | env, capture_output=True, text=True, timeout=60)


def test_two_payware_replicas_run_payware_serve_with_the_config_mounted_read_only():
    replicas = paywares()
    assert sorted(replicas) == ["payware-1", "payware-2"]
    for name, service in replicas.items():
        assert service["entrypoint"] + service["command"][:1] == ["payware", "serve"], name
        config = service["environment"]["PAYWARE_CONFIG"]
        mounts = [v.split(":") for v in service["volumes"]]
        assert ["./payware.yaml", config, "ro"] in mounts, name
        assert service["build"]["context"] == ".." and (DEPLOY / service["build"]["context"] / "Dockerfile").exists()


def test_each_replica_has_its_own_journal_volume():
    journals = {}
    for name, service in paywares().items():
        journal = service["environment"]["PAYWARE_JOURNAL"]
        mounts = {target: source for source, target, *_ in (v.split(":") for v in service["volumes"])}
        folder = str(Path(journal).parent)
        assert folder in mounts, f"{name}: the journal's folder {folder} is not on a volume"
        assert mounts[folder] in COMPOSE["volumes"], f"{name}: {mounts[folder]} is not a named volume"
        journals[name] = mounts[folder]
    assert len(set(journals.values())) == len(journals) == 2, journals


def test_redis_and_postgres_have_health_checks_that_the_replicas_wait_for():
    redis, postgres = SERVICES["redis"], SERVICES["postgres"]
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "noeviction" in redis["command"]  # an evicted hold would let a customer past a cap
    for name, service in paywares().items():
        for dependency in ("redis", "postgres"):
            assert service["depends_on"][dependency] == {"condition": "service_healthy"}, (name, dependency)
        check = " ".join(service["healthcheck"]["test"])
        assert "/healthz" in check and ":8080/" in check
        assert int(service["stop_grace_period"].removesuffix("s")) >= 75  # 60 s of drain, then the ledger flush
    # The second replica starts once the first is healthy: the ledger's migrations run once.
    assert SERVICES["payware-2"]["depends_on"]["payware-1"] == {"condition": "service_healthy"}


def test_keys_and_passwords_come_from_the_environment_never_literals():
    secret = re.compile(r"KEY|SECRET|PASSWORD|TOKEN")
    for name, service in SERVICES.items():
        for var, value in (service.get("environment") or {}).items():
            if secret.search(var):
                assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", str(value)), (name, var, value)
        ledger = (service.get("environment") or {}).get("PAYWARE_LEDGER", "")
        assert not ledger or "${POSTGRES_PASSWORD:?" in ledger
    config = (DEPLOY / "payware.yaml").read_text()
    assert re.search(r"admin_key: \$\{PAYWARE_ADMIN_KEY\}", config)
    assert re.search(r'api_key: "\$\{OPENAI_API_KEY\}"', config)


def test_compose_refuses_to_start_without_the_operators_secrets():
    service = SERVICES["payware-1"]
    for missing in OPERATOR_ENV:
        with pytest.raises(KeyError, match=missing):
            container_env(service, {k: v for k, v in OPERATOR_ENV.items() if k != missing})


def test_the_mounted_config_validates_in_the_environment_compose_gives_a_replica():
    for name, service in paywares().items():
        env = container_env(service)
        result = check_config(DEPLOY / "payware.yaml", env)
        assert result.returncode == 0, (name, result.stdout, result.stderr)
        assert env["PAYWARE_LEDGER"] == "postgresql://payware:pgpassword0123@postgres:5432/payware"
        assert env["PAYWARE_COUNTERS"].startswith("redis://redis:")
    # The config really reads that environment: without the ledger's URL it is refused.
    env = container_env(SERVICES["payware-1"])
    del env["PAYWARE_LEDGER"]
    result = check_config(DEPLOY / "payware.yaml", env)
    assert result.returncode == 2 and "storage.ledger: environment variable PAYWARE_LEDGER is not set" in (
        result.stdout + result.stderr)


def test_the_kubernetes_note_is_a_statefulset_with_a_journal_per_pod_and_readiness_on_healthz():
    text = (DEPLOY / "README.md").read_text()
    block = re.search(r"```yaml\n(apiVersion: apps/v1\n.*?)```", text, re.S).group(1)
    sts = yaml.safe_load(block)
    assert sts["kind"] == "StatefulSet" and sts["spec"]["replicas"] >= 2
    pod = sts["spec"]["template"]["spec"]
    container, = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] >= 75
    claim, = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    env = {e["name"]: e for e in container["env"]}
    assert mounts[claim["metadata"]["name"]]["mountPath"] == str(Path(env["PAYWARE_JOURNAL"]["value"]).parent)
    assert env["PAYWARE_COUNTERS"]["value"].startswith("redis://")
    assert all("valueFrom" in env[name] for name in ("PAYWARE_ADMIN_KEY", "OPENAI_API_KEY", "PAYWARE_LEDGER"))
    assert mounts["config"]["readOnly"] is True


# -- the topology with real processes ------------------------------------------------------------


@pytest.fixture
def pg_database(postgres_url):
    name = "pw_deploy_" + uuid.uuid4().hex[:10]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def replica_env(service: str, folder: Path, fake_upstream, pg_database: str, redis_url: str) -> dict[str, str]:
    """A replica's environment as compose gives it, with the services' addresses of this machine."""
    env = container_env(SERVICES[service])
    folder.mkdir()
    return env | {"PAYWARE_CONFIG": str(DEPLOY / "payware.yaml"), "PAYWARE_HOST": "127.0.0.1",
                  "PAYWARE_PORT": str(free_port()), "PAYWARE_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                  "PAYWARE_LEDGER": pg_database, "PAYWARE_COUNTERS": redis_url,
                  "PAYWARE_JOURNAL": str(folder / "payware.journal"),
                  "OPENAI_BASE_URL": fake_upstream.url, "PAYWARE_LOG_FORMAT": "text"}


def serve(env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "proxy.cli.main", *SERVICES["payware-1"]["command"]], cwd=ROOT,
                                env=python_env() | env, stdout=out, stderr=out)


async def test_two_replicas_on_one_config_file_share_customers_and_usage(tmp_path, fake_upstream, pg_database,
                                                                          redis_url):
    customer = "deploy-" + uuid.uuid4().hex[:8]
    envs = [replica_env(name, tmp_path / name, fake_upstream, pg_database, redis_url)
            for name in ("payware-1", "payware-2")]
    procs = []
    try:
        for i, env in enumerate(envs, 1):  # in compose's order: the second once the first is healthy
            procs.append(serve(env, tmp_path / f"payware-{i}.log"))
            wait_http(f"http://127.0.0.1:{env['PAYWARE_PORT']}/healthz", timeout=60, proc=procs[-1])
        urls = [f"http://127.0.0.1:{env['PAYWARE_PORT']}" for env in envs]
        admin = {"Authorization": f"Bearer {OPERATOR_ENV['PAYWARE_ADMIN_KEY']}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(urls[0] + "/v1/admin/customers", headers=admin,
                                    json={"id": customer, "plan": "payg"}) as resp:
                assert resp.status == 201, await resp.text()
            async with session.post(urls[0] + f"/v1/admin/customers/{customer}/keys", headers=admin, json={}) as resp:
                key = (await resp.json())["key"]
            auth = {"Authorization": f"Bearer {key}"}
            chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
            for url in urls:  # the key made on replica 1 works on replica 2 (within a second)
                for _ in range(100):
                    async with session.post(url + "/v1/chat/completions", headers=auth, json=chat) as resp:
                        if resp.status == 200:
                            break
                        assert resp.status == 401
                    await asyncio.sleep(0.05)
                assert resp.status == 200
            summaries = []
            for url in urls:  # the usage is shared: each replica's summary counts both calls
                async with session.get(url + "/v1/usage/summary", headers=auth) as resp:
                    summaries.append(await resp.json())
            assert summaries[0]["tokens"] == summaries[1]["tokens"]
            assert summaries[0]["amount_due"] == summaries[1]["amount_due"]
            assert summaries[0]["tokens"]["input"] == 2 * 13  # the fake provider reports 13 per call
            for env in envs:  # each replica's own /metrics: its one call
                async with session.get(f"http://{env['PAYWARE_METRICS_LISTEN']}/metrics") as resp:
                    assert 'payware_usage_events_total{model="gpt-4o-mini",status="ok"} 1.0' in await resp.text()
        # A third proxy on in-process counters next to them is refused: caps would drift.
        alone = replica_env("payware-1", tmp_path / "third", fake_upstream, pg_database, redis_url)
        alone["PAYWARE_COUNTERS"] = "memory"
        refused = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--workers", "1"], cwd=ROOT,
                                 env=python_env() | alone, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "storage.counters" in refused.stderr
    finally:
        for proc in procs:
            proc.terminate()  # SIGTERM, as compose and Kubernetes stop a replica
        codes = [proc.wait(30) for proc in procs]
        _forget(redis_url, customer)
    assert codes == [0, 0]  # a clean exit on SIGTERM, journals drained
    with psycopg.connect(pg_database) as conn:
        count, = conn.execute("SELECT count(*) FROM usage_events WHERE customer = %s", (customer,)).fetchone()
    assert count == 2  # both replicas drained their journals into the one ledger


def _forget(redis_url: str, customer: str) -> None:
    """Delete the test customer's keys from the shared test Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"*{customer}*"))
    if keys:
        client.delete(*keys)
    client.close()
