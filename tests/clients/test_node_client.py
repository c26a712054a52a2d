"""The Node client (`clients/js`): Node's own test runner against a real proxy process.

`node --test clients/js/test/` runs with the proxy's URL and keys in its environment; any
failing, cancelled or skipped Node test fails this test, with Node's report as the message.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.clients.conftest import PLANS, node_test_dir
from tests.conftest import ADMIN_KEY, KEYS, ROOT, python_env

NODE = shutil.which("node")


def test_the_node_client_passes_its_tests_against_a_real_proxy(proxy_factory):
    if NODE is None:
        reason = "`node` is not on PATH: the Node client's tests need Node 18.17+"
        if os.environ.get("PAYWARE_REQUIRE_SERVICES"):
            pytest.fail(reason + " (bash .ci/run installs Debian's nodejs)")
        pytest.skip(reason)
    proxy = proxy_factory(plans=PLANS)
    env = python_env() | {
        "PAYWARE_TEST_URL": proxy.url,
        "PAYWARE_TEST_ADMIN_KEY": ADMIN_KEY,
        "PAYWARE_TEST_CUSTOMER": "acme",
        "PAYWARE_TEST_CUSTOMER_KEY": KEYS["acme"],
        "PAYWARE_TEST_OTHER_CUSTOMER": "globex",
    }
    env.pop("PAYWARE_API_KEY", None)
    env.pop("PAYWARE_BASE_URL", None)
    run = subprocess.run([NODE, "--test", str(node_test_dir())], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    report = run.stdout + run.stderr
    counts = {name: int(n) for name, n in re.findall(r"^# (tests|pass|fail|cancelled|skipped|todo) (\d+)$", report,
                                                     re.MULTILINE)}
    assert run.returncode == 0, report
    assert counts.get("tests", 0) > 0 and counts["fail"] == counts["cancelled"] == counts["skipped"] == 0, report
    assert counts["pass"] == counts["tests"], report
