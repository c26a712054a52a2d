"""`payware reconcile` and `payware settle`: the provider's count against Payware's, and
statements turned into Stripe invoices.

- `payware reconcile PROVIDER --from DAY --to DAY [--file REPORT.json] [--api-key-id ID]…
  [--json | --csv] [--no-save]`: reads the provider's usage report (its API with
  `providers.<name>.admin_key`, or an exported file), compares it with the ledger
  (`metering.billing.reconcile`), prints a table (or JSON, or CSV) and saves the run for
  `GET /v1/admin/reconciliation`. Days are UTC dates, both included.
- `payware settle --to stripe [--customer ID] [--dry-run] [--json]`: each frozen statement not
  settled yet becomes a Stripe invoice (`metering.billing.settle`); `--dry-run` shows the
  invoices without calling Stripe or writing anything.

Exit codes: 0 done; 1 the provider or Stripe refused or could not be reached, or (settle) a
statement was skipped or failed (each is listed with its reason); 2 bad input (unknown
provider, bad dates, malformed report file, missing key), named in one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import date, datetime, time, timedelta, timezone

from config.loader import ConfigError, load_config

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
MAX_DAYS = 366  # one run covers at most a year


class _Stop(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def register(sub) -> None:
    """Add `reconcile` and `settle` to the `payware` command's subparsers."""
    def config_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", metavar="FILE", default=os.environ.get("PAYWARE_CONFIG"),
                            help="admin config file (default: $PAYWARE_CONFIG, else the embedded default)")

    text = "compare the provider's own usage report with what Payware recorded"
    reconcile = sub.add_parser("reconcile", help=text, description=text)
    reconcile.add_argument("provider", metavar="PROVIDER", help="a provider of the config (kind openai or anthropic)")
    reconcile.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD", help="first UTC day")
    reconcile.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="last UTC day (included)")
    reconcile.add_argument("--file", metavar="REPORT.json",
                           help="a report exported from the provider's usage API (one page or a list of pages) "
                                "instead of calling it")
    reconcile.add_argument("--api-key-id", action="append", default=[], metavar="ID",
                           help="count only the provider's usage of this API key (repeatable): the key Payware uses")
    output = reconcile.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the run as JSON")
    output.add_argument("--csv", action="store_true", help="print one CSV line per day and model")
    reconcile.add_argument("--no-save", action="store_true", help="do not keep the run in the ledger database")
    config_option(reconcile)
    reconcile.set_defaults(run=lambda args: _guarded(_reconcile, args))

    text = "turn each frozen statement not settled yet into a Stripe invoice"
    settle = sub.add_parser("settle", help=text, description=text)
    settle.add_argument("--to", dest="target", required=True, choices=("stripe",), help="where to settle")
    settle.add_argument("--customer", metavar="ID", help="only this customer's statements")
    settle.add_argument("--dry-run", action="store_true", help="show the invoices; call nothing, write nothing")
    settle.add_argument("--json", action="store_true", help="one JSON object per statement")
    config_option(settle)
    settle.set_defaults(run=lambda args: _guarded(_settle, args))


def _guarded(command, args) -> int:
    try:
        return command(args)
    except _Stop as stop:
        print(f"payware: {stop}", file=sys.stderr)
        return stop.code
    except ConfigError as exc:
        print(f"payware: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _day(value: str, flag: str) -> date:
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise _Stop(f"{flag} {value!r} is not a date (YYYY-MM-DD)", EXIT_BAD_INPUT) from None
    # NOTE: the ledger is read a day wider either side (`_reconcile`): years 1 and 9999 have no neighbour
    if not date.min.year < day.year < date.max.year:
        raise _Stop(f"{flag} {value!r} must be within the years 0002 to 9998", EXIT_BAD_INPUT)
    return day


# -- reconcile --------------------------------------------------------------------------------

def _reconcile(args) -> int:
    from metering.billing.reconcile import config_prices, reconcile, to_csv, to_table
    from metering.billing.usage_reports import READERS, FetchError, ReportError, load_file
    from metering.store.ledger import Ledger
    from metering.store.money_runs import ReconciliationStore

    config = load_config(args.config)
    start, end = _day(args.start, "--from"), _day(args.end, "--to")
    if end < start:
        raise _Stop(f"--to {end} is before --from {start}", EXIT_BAD_INPUT)
    if (end - start).days >= MAX_DAYS:
        raise _Stop(f"--from {start} --to {end} spans more than {MAX_DAYS} days: reconcile a year at most", EXIT_BAD_INPUT)
    provider = config.providers.get(args.provider)
    if provider is None:
        raise _Stop(f"no provider {args.provider!r} in {config.source} (providers: {', '.join(config.providers)})",
                    EXIT_BAD_INPUT)
    if provider.kind not in READERS:
        raise _Stop(f"provider {provider.name!r} is of kind {provider.kind}: Payware reads the usage reports of "
                    f"{' and '.join(READERS)} providers", EXIT_BAD_INPUT)
    api_key_ids = tuple(args.api_key_id)
    try:
        if args.file:
            pages, source = load_file(args.file), f"file {args.file}"
        else:
            if provider.admin_key is None:
                raise _Stop(f"providers.{provider.name}.admin_key is not set in {config.source}: give the "
                            "provider's admin key there (e.g. ${OPENAI_ADMIN_KEY}), or --file REPORT.json", EXIT_BAD_INPUT)
            pages = asyncio.run(_fetch(provider, start, end, api_key_ids))
            source = "api"
        rows = READERS[provider.kind](pages)
    except ReportError as exc:
        raise _Stop(f"{args.file + ': ' if args.file else ''}{exc}", EXIT_BAD_INPUT) from None
    except FetchError as exc:
        raise _Stop(str(exc), EXIT_FAILED) from None
    ledger = Ledger(config.storage.ledger)
    try:
        # NOTE: Payware's side is read a day wider on each end and cut to the range by UTC day
        # in `reconcile`, so an event is never lost to an offset in the query bounds.
        since = datetime.combine(start - timedelta(days=1), time(), timezone.utc)
        until = datetime.combine(end + timedelta(days=2), time(), timezone.utc)
        try:
            report = reconcile(provider=provider.name, kind=provider.kind, start=start, end=end, report=rows,
                               events=ledger.events(start=since, end=until), price_of=config_prices(config, provider.name),
                               source=source, api_key_ids=api_key_ids)
        except ValueError as exc:
            raise _Stop(str(exc), EXIT_BAD_INPUT) from None
        if not args.no_save:
            ReconciliationStore(ledger.engine).save(report)
    finally:
        ledger.close()
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.csv:
        sys.stdout.write(to_csv(report))
    else:
        sys.stdout.write(to_table(report))
    return 0


async def _fetch(provider, start: date, end: date, api_key_ids: tuple[str, ...]) -> list[dict]:
    import aiohttp

    from metering.billing.usage_reports import fetch

    timeout = aiohttp.ClientTimeout(total=120, connect=10, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await fetch(session, kind=provider.kind, base_url=provider.base_url, admin_key=str(provider.admin_key),
                           start=start, end=end, api_key_ids=api_key_ids)


# -- settle -----------------------------------------------------------------------------------

def stripe_client(config, *, env=os.environ):
    """The official SDK's client for `settlement.stripe` (key from there, else $STRIPE_API_KEY),
    and the invoicer using it; _Stop (exit 2) when no key is given."""
    import stripe

    from config.schema import StripeConfig
    from metering.billing.settle import StripeInvoicer

    settings = config.settlement.stripe if config.settlement is not None else StripeConfig()
    api_key = str(settings.api_key) if settings.api_key else env.get("STRIPE_API_KEY")
    if not api_key:
        raise _Stop(f"no Stripe key: set settlement.stripe.api_key in {config.source} or $STRIPE_API_KEY",
                    EXIT_BAD_INPUT)
    client = stripe.StripeClient(api_key, base_addresses={"api": settings.api_base}, max_network_retries=2)
    return StripeInvoicer(client, collection_method=settings.collection_method,
                          days_until_due=settings.days_until_due, finalize=settings.finalize)


def _settle(args) -> int:
    import stripe

    from metering.billing.settle import settle_statements, stripe_customers
    from metering.store.directory import DirectoryStore
    from metering.store.ledger import Ledger
    from metering.store.money_runs import SettlementStore
    from proxy.live import merge

    config = load_config(args.config)
    invoicer = None if args.dry_run else stripe_client(config)
    ledger = Ledger(config.storage.ledger)
    try:
        merged = merge(config, DirectoryStore(ledger.engine).load())  # the file's customers and the admin API's
        if args.customer is not None and args.customer not in merged.customers:
            known = SettlementStore(ledger.engine).statements(args.customer)
            if not known:
                raise _Stop(f"no customer {args.customer!r} in {config.source} or the runtime directory, "
                            "and no statement of it", EXIT_BAD_INPUT)
        try:
            outcomes = settle_statements(store=SettlementStore(ledger.engine),
                                         stripe_ids=stripe_customers(merged.customers.values()), invoicer=invoicer,
                                         customer=args.customer, dry_run=args.dry_run)
        except stripe.AuthenticationError as exc:
            raise _Stop(f"Stripe refused the key: {exc.user_message or 'authentication failed'}", EXIT_FAILED) from None
        except stripe.StripeError as exc:  # NOTE: per-statement errors are outcomes; this is Stripe unreachable
            raise _Stop(f"Stripe: {exc.user_message or type(exc).__name__}", EXIT_FAILED) from None
    finally:
        ledger.close()
    for outcome in outcomes:
        print(json.dumps(outcome.to_json()) if args.json else _line(outcome))
    counts = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no statements"
    print(f"payware: settle{' (dry run)' if args.dry_run else ''}: {summary}", file=sys.stderr)
    return 0 if all(outcome.ok for outcome in outcomes) else EXIT_FAILED


def _line(outcome) -> str:
    total = "" if outcome.total is None else f"{outcome.currency or ''} {outcome.total}".strip()
    parts = [outcome.customer, outcome.period, outcome.status, total]
    if outcome.stripe_customer:
        parts.append(outcome.stripe_customer)
    if outcome.invoice_id:
        parts.append(outcome.invoice_id)
    if outcome.lines and outcome.status in ("would_invoice", "invoiced"):
        rounding = sum(line["amount"] for line in outcome.lines if line["kind"] == "rounding")
        parts.append(f"{len(outcome.lines)} items" + (f", rounding {rounding:+d} minor units" if rounding else ""))
    if outcome.reason:
        parts.append(f"({outcome.reason})")
    text = "  ".join(part for part in parts if part)
    if outcome.status == "would_invoice":
        text += "".join(f"\n    {line['amount']:>10}  {line['description']}" for line in outcome.lines)
    return text
