"""`payware serve --workers N`: N serving processes on one port, each with its own journal.

Python serves on one core per process, so every core needs a process. Each worker binds the
same address with SO_REUSEPORT (the kernel spreads connections across them) and is a whole
proxy: its own event loop, upstream pool, journal (`<storage.journal>.w<i>`: a journal
belongs to one process) and heartbeat; they share the ledger and the Redis counters.

With `counters: memory` each worker would count only its own calls and every cap would
drift, so more than one worker is refused with a config error; the default is then one
worker (and one per core on Redis).

The supervisor (this process) starts with one clear line once every worker serves, forwards
SIGTERM/SIGINT (graceful: each worker drains its journal) and SIGHUP (reload), restarts a
worker that dies after it served, and replays the journals of workers that no longer exist
(a restart with fewer workers) before any worker starts.
"""

from __future__ import annotations

import glob
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import replace

from config.loader import ConfigError
from config.schema import Config

log = logging.getLogger("payware.workers")

RESTART_DELAY = 1.0  # seconds before a worker that died is started again


def default_workers(config: Config) -> int:
    """One per core on Redis counters; one with in-process counters (they cannot be shared)."""
    return 1 if config.storage.counters == "memory" else (os.cpu_count() or 1)


def check(config: Config, workers: int) -> None:
    if workers < 1:
        raise ConfigError(config.source, [f"--workers {workers}: at least one worker is needed"])
    if workers > 1 and config.storage.counters == "memory":
        raise ConfigError(config.source, [
            f"storage.counters: memory cannot be shared by {workers} workers (each would count only its own "
            "calls, and caps would drift): use --workers 1, or storage.counters: redis://…"])


def journal_of(config: Config, index: int, workers: int) -> str:
    """Worker `index`'s journal: the configured path itself for a single worker."""
    return config.storage.journal if workers == 1 else f"{config.storage.journal}.w{index}"


def replay_orphans(config: Config, workers: int) -> int:
    """Write into the ledger the journals that no worker of this start will own, then remove them.

    With several workers the ledger is opened (so migrated) here in any case, before they fork:
    N processes creating a new SQLite file's schema at once would trip over each other's locks.
    """
    from metering.store.journal import Journal, JournalLocked
    from metering.store.ledger import Ledger
    from metering.store.recorder import replay

    owned = {os.path.abspath(journal_of(config, i, workers)) for i in range(workers)}
    base = config.storage.journal
    candidates = [base] + sorted(glob.glob(glob.escape(base) + ".w*"))
    orphans = [p for p in candidates if os.path.isfile(p) and os.path.abspath(p) not in owned
               and os.path.getsize(p) > 0]
    if not orphans and workers == 1:
        return 0
    ledger = Ledger(config.storage.ledger)
    recovered = 0
    try:
        for path in orphans:
            try:
                journal = Journal(path)
            except JournalLocked:
                log.warning("journal %s is still in use by another process: left as it is", path)
                continue
            try:
                recovered += replay(journal, ledger, config.storage.flush_batch)[0]
            finally:
                journal.close()
            os.unlink(path)
    finally:
        ledger.close()
    return recovered


def supervise(config: Config, *, workers: int, host: str, port: int, serve_one, announce) -> int:
    """Run `workers` copies of `serve_one(config, ready)` (each in its own process); returns the exit code.

    The caller has checked the config (`check`) and replayed orphan journals (`replay_orphans`).

    `serve_one` serves until SIGTERM/SIGINT and calls `ready()` once it listens; `announce()`
    prints the "serving on" line once every worker listens.
    """
    context = multiprocessing.get_context("fork")
    ready = context.Queue()
    stopping = False
    procs: dict[int, multiprocessing.Process] = {}

    def start(index: int) -> None:
        own = replace(config, storage=replace(config.storage, journal=journal_of(config, index, workers)))
        proc = context.Process(target=_worker, args=(serve_one, own, index, ready), name=f"payware-worker-{index}")
        proc.start()
        procs[index] = proc

    def forward(signum, _frame) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for proc in procs.values():
            if proc.is_alive():
                os.kill(proc.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    _preload(config)
    for index in range(workers):
        start(index)
    serving = set()
    deadline = time.monotonic() + 120
    while len(serving) < workers:  # every worker listens, or one failed to start
        for index, proc in procs.items():
            if index not in serving and not proc.is_alive():
                forward(signal.SIGTERM, None)
                _join(procs)
                return proc.exitcode or 1  # the worker printed its one line
        try:
            serving.add(ready.get(timeout=0.1))
        except Exception:
            if time.monotonic() > deadline:
                forward(signal.SIGTERM, None)
                _join(procs)
                print("payware: cannot start: the workers did not start within 120 s", file=sys.stderr)
                return 1
    announce()
    while not stopping:
        time.sleep(0.2)
        for index, proc in list(procs.items()):
            if not proc.is_alive() and not stopping:
                log.error("worker %d exited with %s; starting it again", index, proc.exitcode)
                time.sleep(RESTART_DELAY)
                start(index)
    _join(procs)
    return 0


def _preload(config: Config) -> None:
    """Import the serving code, and load the tokenizers admission needs, once, before the workers
    fork: they share these pages (copy-on-write) instead of each loading its own (a tokenizer is
    ~50 MiB), and a worker restarted after a crash starts without loading them again."""
    import proxy.app  # noqa: F401
    from proxy.limits.stores import counts_tokens, load_tokenizers

    if counts_tokens(config):
        load_tokenizers(config)


def _join(procs: dict[int, multiprocessing.Process]) -> None:
    for proc in procs.values():
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def _worker(serve_one, config: Config, index: int, ready) -> None:
    """One worker process: serve until told to stop; exit with the start-up failure's code."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)  # the worker's own loop installs its handlers
    _die_with_parent()
    code = serve_one(config, lambda: ready.put(index))
    sys.exit(code)


def _die_with_parent() -> None:
    """SIGTERM this worker when the supervisor dies, even by SIGKILL (Linux's PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: a killed supervisor leaves its workers, which a process manager stops
