"""How long one customer's huge prompt delays everybody else's small calls.

    .venv/bin/python bench/stall.py                  # a 7 MB prompt, small calls all around it
    .venv/bin/python bench/stall.py --prompt-mb 2 --proxy-root /tmp/old-checkout

Starts the bench upstream and one Payware whose customer has a cap (so admission tokenizes the
prompt to reserve its worst case). A steady stream of small calls (one at a time) runs before,
during and until 0.5 s after one call with a prompt of `--prompt-mb` megabytes. Reported: the small calls'
latency p50 and max before the big call, and while it was being admitted (their added delay is
what a tokenizer on the event loop costs everyone else). A timing measure, so a bench, never a
test: compare runs made in the same hour, or old and new checkouts with `--proxy-root`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import ROOT, Variant, first_answer, spawn_payware, start_upstream  # noqa: E402

KEY = "pw-bench-stall-key-0123456789"


def chat_body(content: str) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "max_tokens": 16,
                       "messages": [{"role": "user", "content": content}]}).encode()


async def measure(url: str, prompt_mb: float) -> dict:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    rng = random.Random(7)  # varied text: a repeated sentence would tokenize unrealistically fast
    vocabulary = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 11)))
                  for _ in range(5000)]
    text = " ".join(rng.choice(vocabulary) for _ in range(int(prompt_mb * 1024 * 1024 / 7)))
    big = chat_body(text)
    tiny = chat_body("hi")
    samples: list[tuple[float, float]] = []  # (start, latency)
    window: dict[str, float] = {}

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:
        async def one(body: bytes) -> float:
            started = time.perf_counter()
            async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            return time.perf_counter() - started

        async def steady() -> None:
            while "end" not in window or time.perf_counter() < window["end"] + 0.5:
                started = time.perf_counter()
                samples.append((started, await one(tiny)))

        async def huge() -> None:
            await asyncio.sleep(0.5)
            window["start"] = time.perf_counter()
            window["latency"] = await one(big)
            window["end"] = time.perf_counter()

        await asyncio.gather(steady(), huge())
    before = sorted(lat for at, lat in samples if at < window["start"])
    during = sorted(lat for at, lat in samples if window["start"] <= at <= window["end"])
    return {"prompt_bytes": len(big), "big_call_s": round(window["latency"], 3),
            "small_before_p50_ms": _ms(before, 0.5), "small_before_max_ms": _ms(before, 1.0),
            "small_during_count": len(during), "small_during_p50_ms": _ms(during, 0.5),
            "small_during_max_ms": _ms(during, 1.0)}


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * (len(values) - 1)))] * 1000, 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-mb", type=float, default=7.0)
    parser.add_argument("--proxy-root", type=Path, default=ROOT, help="run the proxy from another checkout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="payware-stall-") as folder:
        tmp = Path(folder)
        upstream = start_upstream(tmp)
        variant = Variant(counters="memory", limits=True, customer="stall", key=KEY)
        payware = spawn_payware(tmp, variant, upstream.url, root=args.proxy_root,
                                extra_args="")
        try:
            # the default body limit (8 MiB) takes a 7 MB prompt
            first_answer(payware, payware.url + "/v1/chat/completions", chat_body("warm up"),
                         {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            result = asyncio.run(measure(payware.url, args.prompt_mb))
        finally:
            payware.stop()
            upstream.stop()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
