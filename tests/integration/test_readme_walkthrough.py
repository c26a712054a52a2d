"""The README's "Using a real provider" walkthrough, run as written, from the config to a metered call.

The section's ```sh blocks run in order as one bash script (`set -eo pipefail`: it stops at the
first command that fails), in an empty folder whose `.venv` links to this checkout's, with no
PAYWARE_* variable set. The test changes only this, and asserts that each change applied:

- the provider's base_url, `https://api.openai.com/v1`, becomes the fake provider's URL;
- `OPENAI_API_KEY=sk-...` gets a test value;
- the proxy's port, 8080 (in `my.yaml` and in the URLs), becomes a free port;
- pip may not reach an index (PIP_NO_INDEX=1): `pip install openai` finds the SDK installed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

from tests.conftest import ROOT, free_port, python_env

SECTION = "## Using a real provider"


def walkthrough() -> list[str]:
    """The section's shell blocks, in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    return re.findall(r"```sh\n(.*?)```", readme[start:end if end > 0 else None], flags=re.S)


def substitute(script: str, **values: str) -> str:
    for old, new in (("https://api.openai.com/v1", values["provider"]), ("OPENAI_API_KEY=sk-...", values["key"]),
                     ("port: 8080", f"port: {values['port']}"), ("127.0.0.1:8080", f"127.0.0.1:{values['port']}")):
        assert old in script, f"the walkthrough no longer has {old!r}: update this test"
        script = script.replace(old, new)
    return script


def test_the_real_provider_walkthrough_works_verbatim_up_to_a_metered_call(tmp_path, fake_upstream):
    blocks = walkthrough()
    script = "\n".join(blocks)
    for step in ("payware check-config my.yaml", "payware customers create", "payware keys create",
                 "payware serve --config my.yaml", "from openai import OpenAI", "payware usage summary"):
        assert step in script, f"the walkthrough lost its step {step!r}"
    port = free_port()
    script = substitute(script, provider=fake_upstream.url, key="OPENAI_API_KEY=sk-walkthrough-test", port=str(port))
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in python_env().items() if not k.startswith("PAYWARE_") and k != "PYTHONPATH"}
    env |= {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        # its own session: the proxy the script leaves in the background is stopped with the group
        proc = subprocess.Popen(["bash", "-c", "set -eo pipefail\n" + script], cwd=tmp_path, env=env,
                                stdout=stdout, stderr=stderr, start_new_session=True)
        try:
            code = proc.wait(timeout=90)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    printed, errors = out.read_text(), err.read_text()
    assert code == 0, f"the walkthrough stopped (exit {code}):\n{printed}\n{errors}"
    assert "my.yaml: ok (1 providers, 2 models, 1 plans, 0 customers)" in printed
    assert "The key is shown once" in errors and "pw-" not in printed.split("serving on")[0]  # the key went to a variable
    assert "Hello from fake." in printed  # the provider's answer, through the proxy
    # fake-ok's usage: 13 input (4 cached), 7 output, at litellm's gpt-4o-mini prices, x 1.25
    assert re.search(r"^requests:\s+1$", printed, flags=re.M), printed
    assert re.search(r"^amount due exact:\s+0\.0000073125 USD$", printed, flags=re.M), printed
    assert re.search(r"^\s+gpt-4o-mini\s+1\s+13\s+4\s+0\s+0\s+7\s+2\s+20\b", printed, flags=re.M), printed
    assert re.search(r"^acme\s+payg\s+yes\s+api\s+1\s+20\s+0\.00 USD\s+50\.00\s+49\.99", printed, flags=re.M), printed
    forwarded = [r for r in fake_upstream.stats()["last"] if '"gpt-4o-mini"' in r["body"]]
    assert forwarded and forwarded[-1]["headers"]["Authorization"] == "Bearer sk-walkthrough-test"
    assert not (ROOT / "my.yaml").exists()  # it ran in its own folder
