"""The `payware` command: serve, check the config, manage keys, read usage and prices."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import secrets
import sys
from datetime import datetime, timezone

from config.loader import ConfigError, load_config
from config.schema import Config, key_id

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

    keys = sub.add_parser("keys", help="customer keys").add_subparsers(metavar="ACTION")
    create = keys.add_parser("create", help="print a new key for CUSTOMER, once, and its hash for the config")
    create.add_argument("customer")
    create.add_argument("--config", metavar="FILE", default=os.environ.get("PAYWARE_CONFIG"))
    create.set_defaults(run=_keys_create)
    revoke = keys.add_parser("revoke", help="remove a key (by its id, from `keys list`) from the config file")
    revoke.add_argument("key_id")
    revoke.add_argument("--config", metavar="FILE", default=os.environ.get("PAYWARE_CONFIG"), required=False)
    revoke.set_defaults(run=_keys_revoke)
    listing = keys.add_parser("list", help="list the key ids of each customer")
    listing.add_argument("--config", metavar="FILE", default=os.environ.get("PAYWARE_CONFIG"))
    listing.set_defaults(run=_keys_list)

    usage = sub.add_parser("usage", help="usage from the ledger").add_subparsers(metavar="ACTION")
    summary = usage.add_parser("summary", help="a customer's open period, from the ledger")
    summary.add_argument("customer")
    summary.add_argument("--config", metavar="FILE", default=os.environ.get("PAYWARE_CONFIG"))
    summary.set_defaults(run=_usage_summary)
    export = usage.add_parser("export", help="a customer's events as JSON lines")
    export.add_argument("customer")
    export.add_argument("--from", dest="start", help="ISO 8601 start (inclusive)")
    export.add_argument("--to", dest="end", help="ISO 8601 end (exclusive)")
    export.add_argument("--config", metavar="FILE", default=os.environ.get("PAYWARE_CONFIG"))
    export.set_defaults(run=_usage_export)

    statements = command("statements", _statements, "a customer's closed-period statements, newest first")
    statements.add_argument("customer")

    prices = command("prices", _prices, "show the price of each model (or one)")
    prices.add_argument("model", nargs="?")
    return parser


def _config(args) -> Config:
    return load_config(args.config)


def _serve(args) -> int:
    from proxy.redact import JsonFormatter, RedactingFormatter
    from proxy import workers

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
    from proxy.server import run

    try:
        app = make_app(config)
        run(app, host=host, port=port, idle_timeout=config.server.idle_timeout, reuse_port=reuse_port,
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
    if config.webhooks is not None:
        found.append(config.webhooks.secret)
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


def _keys_create(args) -> int:
    config = _config(args)
    if args.customer not in config.customers:
        print(f"payware: no customer {args.customer!r} in {config.source}", file=sys.stderr)
        return EXIT_BAD_INPUT
    key = "pw-" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    print(f"key:    {key}")
    print(f"id:     {key_id(digest)}")
    print(f"config: add \"sha256:{digest}\" to customers.{args.customer}.keys in {config.source}")
    print("The key is shown once; Payware keeps only its hash.", file=sys.stderr)
    return 0


def _keys_list(args) -> int:
    config = _config(args)
    for customer in config.customers.values():
        for entry in customer.keys:
            print(f"{customer.id}\t{key_id(entry.removeprefix('sha256:'))}")
    return 0


def _keys_revoke(args) -> int:
    """Delete the key's hash from the config file; the file is rewritten only if it stays valid."""
    import re
    from pathlib import Path

    from config.loader import parse_config

    if not args.config:
        print("payware: keys revoke edits a config file: give --config FILE", file=sys.stderr)
        return EXIT_BAD_INPUT
    config = _config(args)
    matches = [(c.id, k) for c in config.customers.values() for k in c.keys
               if key_id(k.removeprefix("sha256:")) == args.key_id]
    if not matches:
        print(f"payware: no key {args.key_id!r} in {config.source} (see `payware keys list`)", file=sys.stderr)
        return EXIT_BAD_INPUT
    customer, entry = matches[0]
    path = Path(config.source)
    text = path.read_text(encoding="utf-8")
    quoted = rf"""["']?{re.escape(entry)}["']?"""
    # a flow list item (with its comma) or a block list line, whichever the file uses
    edited, count = re.subn(rf"{quoted}\s*,\s*|,\s*{quoted}|{quoted}|^\s*-\s*{quoted}[^\n]*\n", "", text,
                            count=1, flags=re.M)
    edited = re.sub(r"^\s*-\s*$\n", "", edited, flags=re.M)
    try:
        remaining = parse_config(edited, source=str(path), env=os.environ)
    except ConfigError as exc:
        print(f"payware: not revoked, the edited file would be invalid:\n{exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if count != 1 or entry in remaining.customers[customer].keys:
        print(f"payware: could not find {entry} in the text of {path}; remove it by hand", file=sys.stderr)
        return EXIT_BAD_INPUT
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(edited, encoding="utf-8")
    os.replace(tmp, path)  # atomic: the file is old or new, never half written
    print(f"revoked {args.key_id} of {customer} in {path}; restart the proxy (or its instances) to apply")
    return 0


def _usage_summary(args) -> int:
    from metering.limits.counters import PeriodTotals
    from metering.store.events import money_str
    from metering.store.ledger import Ledger
    from metering.billing.meter import Meter

    config = _config(args)
    customer = config.customers.get(args.customer)
    if customer is None:
        print(f"payware: no customer {args.customer!r} in {config.source}", file=sys.stderr)
        return EXIT_BAD_INPUT
    ledger = Ledger(config.storage.ledger)
    meter = Meter(config)
    meter.restore_thresholds(ledger)
    period = meter.period(customer, datetime.now(timezone.utc))
    totals = PeriodTotals()
    for event in ledger.events(customer=customer.id, period=period.key):
        totals.add(event)
    plan = config.plans[customer.plan]
    print(json.dumps({"customer": customer.id, "period": {"start": period.start.isoformat(),
                                                          "end": period.end.isoformat()},
                      "requests": totals.all.requests,
                      "tokens": {"input": totals.all.input_tokens, "cached_input": totals.all.cached_input_tokens,
                                 "output": totals.all.output_tokens, "reasoning": totals.all.reasoning_tokens},
                      "amount_due_exact": money_str(plan.base_fee + totals.all.amount), "currency": plan.currency},
                     indent=2))
    return 0


def _usage_export(args) -> int:
    from metering.store.ledger import Ledger

    config = _config(args)
    start = _parse_time(args.start, "--from")
    end = _parse_time(args.end, "--to")
    ledger = Ledger(config.storage.ledger)
    for event in ledger.events(customer=args.customer, start=start, end=end):
        sys.stdout.write(event.to_json() + "\n")
    return 0


def _statements(args) -> int:
    from metering.store.ledger import Ledger

    config = _config(args)
    if args.customer not in config.customers:
        print(f"payware: no customer {args.customer!r} in {config.source}", file=sys.stderr)
        return EXIT_BAD_INPUT
    frozen = Ledger(config.storage.ledger).statements(args.customer)
    for key in sorted(frozen, reverse=True):
        print(json.dumps(frozen[key]))
    return 0


def _prices(args) -> int:
    from metering.store.events import decimal_str

    config = _config(args)
    names = [args.model] if args.model else list(config.models)
    now = datetime.now(timezone.utc)
    for name in names:
        model = config.models.get(name)
        if model is None:
            print(f"payware: no model {name!r} in {config.source}", file=sys.stderr)
            return EXIT_BAD_INPUT
        price = model.price_at(now)
        print(json.dumps({"model": name, "upstream": model.upstream, "provider": model.provider,
                          "per_million": {"input": decimal_str(price.input),
                                          "cached_input": decimal_str(price.cached_input),
                                          "output": decimal_str(price.output)},
                          "source": price.source}))
    return 0


def _parse_time(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"payware: {flag} {value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


if __name__ == "__main__":
    sys.exit(main())
