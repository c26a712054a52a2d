"""The `payware` command: serve, check the config, manage keys, read usage and prices."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys

from config.loader import ConfigError, load_config
from config.schema import Config
from proxy.cli.admin import register as register_admin_commands
from proxy.cli.money import register as register_money_commands

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch prices over the network
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return args.run(args) or 0
    except ConfigError as exc:
        print(f"payware: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="payware", description="Metering proxy for OpenAI-compatible APIs.")
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(name: str, run, help: str, *, config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        if config:
            p.add_argument("--config", metavar="FILE", default=os.environ.get("PAYWARE_CONFIG"),
                           help="admin config file (default: $PAYWARE_CONFIG, else the embedded default)")
        p.set_defaults(run=run)
        return p

    serve = command("serve", _serve, "run the proxy")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument("--workers", type=int, metavar="N",
                       help="serving processes, one per core (default: the number of cores with Redis counters, "
                            "1 with memory counters, which cannot be shared)")

    check = command("check-config", _check_config, "validate a config file and exit", config=False)
    check.add_argument("file", metavar="FILE")

    register_admin_commands(sub)  # customers, keys, usage, prices: proxy/cli/admin.py
    register_money_commands(sub)  # reconcile, settle: proxy/cli/money.py

    statements = command("statements", _statements, "a customer's closed-period statements, newest first")
    statements.add_argument("customer")
    return parser


def _config(args) -> Config:
    return load_config(args.config)


def _serve(args) -> int:
    from proxy.serving import accesslog
    from proxy.serving.redact import JsonFormatter, RedactingFormatter
    from proxy.serving import workers

    config = _config(args)
    handler = logging.StreamHandler()
    fmt = os.environ.get("PAYWARE_LOG_FORMAT", "text")
    if fmt not in ("text", "json"):
        print(f"payware: PAYWARE_LOG_FORMAT={fmt!r}: use text or json", file=sys.stderr)
        return EXIT_BAD_INPUT
    formatter = JsonFormatter if fmt == "json" else RedactingFormatter
    handler.setFormatter(formatter("%(asctime)s %(levelname)s %(name)s %(message)s", secrets=_secrets(config)))
    logging.basicConfig(level=os.environ.get("PAYWARE_LOG_LEVEL", "INFO"), handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin chatter at every start
    if os.environ.get("PAYWARE_ACCESS_LOG", "1") in ("0", "off", "false"):
        logging.getLogger("payware.access").setLevel(logging.WARNING)
    accesslog.write_directly(handler.stream, json_format=fmt == "json")
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    count = args.workers if args.workers is not None else workers.default_workers(config)

    def announce() -> None:
        many = f", {count} workers" if count > 1 else ""
        print(f"payware: serving on http://{host}:{port}/v1 (config {config.source}{many})", flush=True)

    def serve_one(own: Config, ready) -> int:
        return _serve_one(own, host=host, port=port, reuse_port=count > 1, ready=ready)

    try:
        workers.check(config, count)
        recovered = workers.replay_orphans(config, count)  # journals of workers that no longer exist
        if recovered:
            logging.getLogger("payware").warning("replayed %d events from other workers' journals", recovered)
        if count == 1:
            return serve_one(config, announce)
        return workers.supervise(config, workers=count, host=host, port=port, serve_one=serve_one,
                                 announce=announce)
    except Exception as exc:
        reason, code = _startup_failure(exc, host, port)
        print(f"payware: cannot start: {reason}", file=sys.stderr, flush=True)
        return code


def _serve_one(config: Config, *, host: str, port: int, reuse_port: bool, ready) -> int:
    """One serving process until SIGTERM/SIGINT; a start-up failure is one line and an exit code."""
    from proxy.app import make_app
    from proxy.serving.server import listen, run

    try:
        sockets = listen(host, port, reuse_port=reuse_port)  # NOTE: first: a port in use starts nothing
        app = make_app(config)
        run(app, sockets=sockets, idle_timeout=config.server.idle_timeout, max_body=config.server.max_body_bytes,
            loop=_event_loop(), on_ready=ready)
    except Exception as exc:  # NOTE: a start-up failure is one clear line and an exit code, no traceback
        reason, code = _startup_failure(exc, host, port)
        print(f"payware: cannot start: {reason}", file=sys.stderr, flush=True)
        return code
    return 0


def _startup_failure(exc: BaseException, host: str, port: int) -> tuple[str, int]:
    """What stopped the start, in one line, and the exit code (2: the config; 1: anything else)."""
    import errno

    from metering.store.journal import JournalLocked

    if isinstance(exc, ConfigError):
        return str(exc), EXIT_BAD_INPUT
    if isinstance(exc, JournalLocked):
        return str(exc), 1
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"{host}:{port} is in use by another process (set server.port or --port)", 1
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EADDRNOTAVAIL):
        return f"cannot listen on {host}:{port}: {exc.strerror}", 1
    if type(exc).__module__.startswith(("sqlalchemy", "psycopg", "sqlite3")):
        first = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0][:300]
        return f"the ledger database is unreachable or unusable: {first}", 1
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({getattr(exc, 'filename', '') or 'I/O'})", 1
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}", 1


def _secrets(config: Config) -> list[str]:
    """Every secret the config holds: none of them may reach a log line."""
    found = [config.server.admin_key] + [p.api_key for p in config.providers.values()]
    found += [p.admin_key for p in config.providers.values()]  # usage reports (payware reconcile)
    if config.webhooks is not None:
        found.append(config.webhooks.secret)
    if config.settlement is not None:  # Stripe's key (payware settle, settlement.after_close)
        found += [config.settlement.stripe.api_key, os.environ.get("STRIPE_API_KEY")]
    return [str(s) for s in found if s]


def _event_loop():
    """uvloop where it is installed (10-15 % less CPU per request), else asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _check_config(args) -> int:
    config = load_config(args.file)
    print(f"{args.file}: ok ({len(config.providers)} providers, {len(config.models)} models, "
          f"{len(config.plans)} plans, {len(config.customers)} customers)")
    return 0


def _statements(args) -> int:
    from metering.store.directory import DirectoryStore
    from metering.store.ledger import Ledger

    config = _config(args)
    ledger = Ledger(config.storage.ledger)
    try:
        # a customer of the file, or one made at runtime (kept in the ledger's database)
        if args.customer not in config.customers and DirectoryStore(ledger.engine).customer(args.customer) is None:
            print(f"payware: no customer {args.customer!r} in {config.source} or in the ledger's directory",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        frozen = ledger.statements(args.customer)
    finally:
        ledger.close()
    for key in sorted(frozen, reverse=True):
        print(json.dumps(frozen[key]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
