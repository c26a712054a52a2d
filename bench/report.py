"""The bench's markdown: the ratio table first, then every target's numbers, then the facts."""

from __future__ import annotations

import math

from loadgen import median

SCRIPT_COMMANDS = ("eval", "fcall")  # eval, evalsha, eval_ro, evalsha_ro, fcall, fcall_ro: one round trip each


def _f(x, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _mib(kb: dict | None, field: str = "VmRSS") -> str:
    return "n/a" if not kb else f"{kb[field] / 1024:.0f} MiB"


def ratio_table(report: dict) -> str:
    cases = report["cases"]
    heads = [f"{c['scenario']} c={c['concurrency']}" for c in cases]
    rows = ["| CPU per request | " + " | ".join(heads) + " | median ratio |",
            "|---|" + "---:|" * (len(cases) + 1),
            "| reference pass-through, µs | " + " | ".join(
                f"{c['targets']['reference']['cpu_us_per_req']:.0f}" for c in cases) + " | 1 |"]
    paywares = list(dict.fromkeys(name for c in cases for name, row in c["targets"].items() if row["kind"] == "payware"))
    for name in paywares:
        cells, ratios = [], []
        for c in cases:
            row = c["targets"].get(name)
            if row is None:  # a scenario this Payware does not serve (a litellm model)
                cells.append("–")
                continue
            ratios.append(row["ratio"])
            cells.append(f"**{row['ratio']:.2f}×** [{row['ratio_min']:.2f}–{row['ratio_max']:.2f}] "
                         f"{row['cpu_us_per_req']:.0f} µs")
        rows.append(f"| {name} | " + " | ".join(cells) + f" | **{median(ratios):.2f}×** |")
    return "\n".join(rows)


def detail_table(report: dict) -> str:
    rows = ["| scenario | c | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU µs/req | "
            "ratio | server busy | kernel share | upstream µs/req | client µs/req |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in report["cases"]:
        for row in case["targets"].values():
            rows.append(
                f"| {case['scenario']} | {case['concurrency']} | {row['name']} | {row['rps']:.0f} | {_f(row['p50_ms'])} | "
                f"{_f(row['p99_ms'])} | {_f(row.get('added_p50_ms'), sign=True)} | {_f(row.get('added_p99_ms'), sign=True)} | "
                f"{row['cpu_us_per_req']:.0f} | {_f(row.get('ratio'), 2)} | {100 * row['busy']:.0f}% | "
                f"{100 * row['cpu_sys_share']:.0f}% | "
                f"{row['upstream_cpu_us_per_req']:.0f} | {row['client_cpu_us_per_req']:.0f} |")
    return "\n".join(rows)


def facts(report: dict) -> list[str]:
    servers, checks = report["servers"], report["metering_check"]
    lines = ["Start-up, spawn to the first answered request: " + ", ".join(
        f"{name} {s['startup_s']:.2f} s" for name, s in servers.items()) + ".",
        "RSS idle after start-up: " + ", ".join(
            f"{name} {_mib(s.get('memory_kb_idle_after_start'))}" for name, s in servers.items()) + ".",
        "RSS after the cases: " + ", ".join(
            f"{name} {_mib(s.get('memory_kb_after_cases'))} after {s['requests_after_cases']} requests "
            f"(peak {_mib(s.get('memory_kb_after_cases'), 'VmHWM')})" for name, s in servers.items()) + ".",
        "Idle CPU after start-up: " + ", ".join(
            f"{name} {s['idle_cpu_us_per_s']:.0f} µs/s" for name, s in servers.items()) + "."]
    soaks = {name: s["soak"] for name, s in servers.items() if "soak" in s}
    if soaks:
        lines.append("Soak: " + ", ".join(
            f"{name} {s['requests']} more requests at {s['rps']:.0f} req/s, then RSS {_mib(s['memory_kb_after'])} "
            f"(peak {_mib(s['memory_kb_after'], 'VmHWM')})" for name, s in soaks.items()) + ".")
    redis: dict[str, list[str]] = {}
    for case in report["cases"]:
        for row in case["targets"].values():
            if "redis_calls_per_req" in row:
                calls = row["redis_calls_per_req"]
                scripts = sum(v for k, v in calls.items() if k.startswith(SCRIPT_COMMANDS))
                redis.setdefault(row["name"], []).append(
                    f"{case['scenario']} c={case['concurrency']}: {row['redis_round_trips_per_req']:.2f} round trips, "
                    f"{scripts:.2f} scripts, "
                    f"{sum(calls.values()):.1f} commands, {row['redis_cpu_us_per_req']:.0f} µs Redis CPU")
    for name, cells in redis.items():
        lines.append(f"Redis per request, {name} (server-wide INFO, script-inner commands included; the "
                     f"breakdown is in the JSON): " + "; ".join(cells) + ".")
    for name, check in checks.items():
        verdict = "OK" if check["ok"] else "MISMATCH"
        lines.append(f"Metering check {name}: sent {check['expected']} (start-up, warm-up, measured"
                     f"{', soak' if name in soaks else ''}), summary {check['summary_requests']}, ledger "
                     f"{check['ledger_events'] if check['ledger_events'] is not None else 'not checked'} -> {verdict}.")
    pin = report["pinning"]
    machine = report["machine"]
    lines.append(f"Pinning: {pin['mode']}" + (f" over cores {pin['cores']}" if pin["cores"] else " (none)") +
                 f". Machine: {machine['cpus']} CPUs, load {machine['loadavg_before']} before, "
                 f"{machine['loadavg_after']} after; Python {machine['python']}, aiohttp {machine['aiohttp']}; "
                 f"git {report['git']}; {report['wall_s']} s.")
    if float(machine["loadavg_before"].split()[0]) > 0.5:
        lines.append("WARNING: the machine was busy before the run (1-min load above 0.5): the numbers are noisy.")
    return lines


def markdown(report: dict) -> str:
    return "\n".join([
        ratio_table(report), "",
        "Ratio = Payware's CPU per request over the reference's, pooled over the run's rounds; [per-round "
        "range]. CPU from each server's /proc/<pid>/task/*/schedstat over its own blocks.", "",
        detail_table(report), "",
        "Added latency = the target's percentile minus the direct one (a difference of percentiles); a stream's "
        "latency is to its last byte. For `direct` the CPU column is the upstream's. Server busy = its CPU over "
        "its blocks' wall time (1 core = 100 %): at c > 1, well below 100 % means the load side, not this "
        "server, set the pace (above 100 %: the CPU includes the settle pause's ledger flush). Kernel share: stime/(utime+stime), 100 Hz ticks (coarse in short runs).", "",
        *facts(report)])
