"""`payware customers|keys|usage|prices`: the admin API's operations from the command line.

Every customer and key command works in two modes (`proxy.cli.modes`), with the same validation
and the same output:

- `--url URL`: through a running proxy's admin API (the admin key from `--admin-key` or
  $PAYWARE_ADMIN_KEY);
- without `--url`: directly on the ledger database of `--config FILE` (default: $PAYWARE_CONFIG,
  else the embedded default), no proxy needed.

Output is a table or `label: value` lines; `--json` prints the API's JSON, for scripts. Exit
codes: 0 done; 1 nothing found, refused (a conflict) or the proxy unreachable; 2 bad input
(the field is named). An error is one line on stderr, never a traceback; long commands count
their progress on stderr.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from datetime import datetime, timezone
from decimal import Decimal

from config.loader import ConfigError
from proxy.cli.modes import EXIT_BAD_INPUT, Failure, Progress, api_failure, backend, first_line

EVENTS_PER_DOT = 1000  # `usage export`: a progress line every this many events
CUSTOMERS_PER_DOT = 100  # `usage all`, `customers list`, `keys list`: every this many customers
CUSTOMER_OPTIONS = ("plan", "cap", "cap_action", "cap_mode", "rpm", "tpm", "models", "metadata", "anchor_day")
KEY_OPTIONS = ("name", "expires_at", "cap", "rpm", "tpm", "models")
SHOWN_ONCE = "The key is shown once; Payware keeps only its hash."


# -- options into API bodies --------------------------------------------------------------------

UNSET = object()  # an option not given (None: given as `none`, to remove a setting)


def _whole(text: str | None):
    """An integer option as a number when it is one; else the text, for the validator to name."""
    return int(text) if text is not None and re.fullmatch(r"-?\d+", text.strip()) else text


def _none(text: str | None) -> bool:
    return text is not None and text.strip().lower() == "none"


def _rate_limit(args, current: dict | None):
    """`--rpm`/`--tpm` over the current limits (`none` removes one); None: no rate limit."""
    if args.rpm is None and args.tpm is None:
        return UNSET
    rate = {k: v for k, v in (current or {}).items() if v is not None}
    for name in ("rpm", "tpm"):
        value = getattr(args, name)
        if _none(value):
            rate.pop(name, None)
        elif value is not None:
            rate[name] = _whole(value)
    return rate or None


def _models(text: str | None):
    if text is None:
        return UNSET
    return None if text.strip().lower() == "all" else [m.strip() for m in text.split(",") if m.strip()]


def customer_body(args, current: dict | None = None) -> dict:
    """The admin API body of `customers create|update`; `current` (update): the customer now,
    so `--cap-action notify` keeps the amount and `--rpm` keeps the TPM."""
    body = {}
    if args.plan is not None:
        body["plan"] = args.plan
    if _none(args.cap):
        body["cap"] = None
    elif any(v is not None for v in (args.cap, args.cap_action, args.cap_mode)):
        cap = dict((current or {}).get("cap") or {})
        for name, value in (("amount", args.cap), ("action", args.cap_action), ("mode", args.cap_mode)):
            if value is not None:
                cap[name] = value
        body["cap"] = cap
    rate = _rate_limit(args, (current or {}).get("rate_limit"))
    if rate is not UNSET:
        body["rate_limit"] = rate
    models = _models(args.models)
    if models is not UNSET:
        body["models"] = models
    if args.metadata is not None:
        try:
            body["metadata"] = json.loads(args.metadata, parse_float=Decimal)  # as the API reads its body
        except ValueError as exc:
            raise Failure(f"--metadata is not valid JSON: {exc} (field: metadata)", EXIT_BAD_INPUT) from None
    if args.anchor_day is not None:
        body["anchor_day"] = _whole(args.anchor_day)
    return body


def key_body(args) -> dict:
    """The admin API body of `keys create` (a key's own limits: unset ones are its customer's)."""
    body = {}
    if args.name is not None:
        body["name"] = args.name
    if args.expires_at is not None:
        value = args.expires_at.strip()
        # a unix time (ASCII digits: int() takes other scripts' digits too), or ISO 8601; either is
        # bounded by the API's own check (`admin_ops.instant_us`), in direct mode as through a URL
        body["expires_at"] = int(value) if value.isascii() and value.isdigit() else value
    if args.cap is not None and not _none(args.cap):
        body["cap"] = args.cap
    rate = _rate_limit(args, None)
    if rate is not UNSET and rate is not None:
        body["rate_limit"] = rate
    models = _models(args.models)
    if models is not UNSET and models is not None:
        body["models"] = models
    return body


# -- output -------------------------------------------------------------------------------------

def emit(args, data, render) -> None:
    """`data` as JSON with --json, else as `render` writes it for people."""
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
    else:
        render(data)


def pairs(rows: list[tuple[str, object]]) -> None:
    width = max(len(label) for label, _ in rows) + 1
    for label, value in rows:
        print(f"{label + ':':<{width}} {value}")


def table(header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _when(iso: str | None) -> str:
    return "-" if iso is None else iso[:19].replace("T", " ") + "Z"


def _rate_text(rate: dict | None) -> str:
    if not rate:
        return "none"
    return ", ".join(f"{k} {v}" for k, v in rate.items() if v is not None) or "none"


def _tokens_text(tokens: dict) -> str:
    return (f"input {tokens['input']} (cached {tokens['cached_input']}, cache writes {tokens['cache_write']}, "
            f"1h {tokens['cache_write_1h']}), output {tokens['output']} (reasoning {tokens['reasoning']}), "
            f"total {tokens['total']}")


def print_customer(view: dict) -> None:
    usage, cap = view["usage"], view["cap"]
    pairs([
        ("customer", view["id"]), ("plan", view["plan"]),
        ("active", "yes" if view["active"] else "no (deactivated: its keys are refused)"),
        ("source", "config file" if view["source"] == "config" else "runtime (ledger database)"),
        ("cap", "none" if cap is None else f"{cap['amount']} {usage['currency']}, {cap['action']}, {cap['mode']}"
                                           + (", clamp" if cap["clamp"] else "")),
        ("rate limit", _rate_text(view["rate_limit"])),
        ("models", "all" if view["models"] is None else ", ".join(view["models"]) or "(none)"),
        ("anchor day", view["anchor_day"]),
        ("metadata", json.dumps(view["metadata"], ensure_ascii=False)),
        ("period", f"{usage['period']['start']} to {usage['period']['end']} ({usage['period']['interval']})"),
        ("requests", usage["requests"]), ("tokens", _tokens_text(usage["tokens"])),
        ("amount due", f"{usage['amount_due']} {usage['currency']} (exact {usage['amount_due_exact']})"),
        ("remaining", "no cap" if usage["remaining"] is None else f"{usage['remaining']} of {usage['cap']}"),
    ])


def print_key(made: dict) -> None:
    limits = [f"cap {made['cap']}"] if made.get("cap") else []
    limits += [_rate_text(made["rate_limit"])] if made.get("rate_limit") else []
    limits += ["models " + ",".join(made["models"])] if made.get("models") else []
    rows = [("key", made["key"]), ("id", made["id"]), ("customer", made["customer"]),
            ("name", made["name"] or "-"), ("expires", _when(made["expires_at"]) if made["expires_at"] else "never")]
    if limits:
        rows.append(("limits", "; ".join(limits)))
    if made.get("replaces"):
        rows.append(("replaces", f"{made['replaces']} (valid until {_when(made['old_key_expires_at'])})"))
    pairs(rows)


def print_summary(summary: dict) -> None:
    cap, period = summary["cap"], summary["period"]
    pairs([
        ("customer", summary["customer"]), ("plan", summary["plan"]),
        ("period", f"{period['start']} to {period['end']} ({period['interval']})"),
        ("requests", summary["requests"]), ("tokens", _tokens_text(summary["tokens"])),
        ("base fee", f"{summary['base_fee']} {summary['currency']}"),
        ("amount due", f"{summary['amount_due']} {summary['currency']} (rounded once, half up)"),
        ("amount due exact", f"{summary['amount_due_exact']} {summary['currency']}"),
        ("cap", "none" if cap is None else f"{cap['amount']} ({cap['action']}, {cap['mode']}): spent {cap['spent']}, "
                                           f"remaining {cap['remaining']}"),
        ("kept aside", f"{summary['evidence']['kept_aside']} events (billed without their metadata; "
                       "see dead_letters)"),
    ])
    if summary["by_model"]:
        print("by model:")
        table(["  MODEL", "REQUESTS", "INPUT", "CACHED", "CACHE WRITE", "CACHE WRITE 1H", "OUTPUT", "REASONING",
               "TOTAL", "QUANTITY", "AMOUNT"],
              [["  " + m["model"], m["requests"], *(m["tokens"][k] for k in ("input", "cached_input", "cache_write",
                                                                            "cache_write_1h", "output", "reasoning",
                                                                            "total")),
                m["quantity"], m["amount"]] for m in summary["by_model"]])


def print_usage_rows(rows: list[dict]) -> None:
    if not rows:
        print("no customers")
        return
    table(["CUSTOMER", "PLAN", "ACTIVE", "REQUESTS", "TOKENS", "AMOUNT DUE", "CAP", "REMAINING"],
          [[r["customer"], r["plan"], "yes" if r["active"] else "no", r["requests"], r["tokens_total"],
            f"{r['amount_due']} {r['currency']}", r["cap"], r["remaining"]] for r in rows])
    currencies = {r["currency"] for r in rows}
    if len(currencies) == 1:
        due = sum(Decimal(r["amount_due"]) for r in rows)
        print(f"{len(rows)} customers, {sum(r['requests'] for r in rows)} requests, "
              f"{sum(r['tokens_total'] for r in rows)} tokens, {due} {currencies.pop()} due")


def write_csv(rows: list[dict]) -> None:
    """The CSV of `GET /v1/admin/usage?format=csv`, the same columns in both modes."""
    writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["customer"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


# -- commands -----------------------------------------------------------------------------------

def customers_create(args) -> int:
    with backend(args) as mode:
        emit(args, mode.create_customer({"id": args.customer, **customer_body(args)}), print_customer)
    return 0


def customers_list(args) -> int:
    with backend(args) as mode:
        progress = Progress("customers", CUSTOMERS_PER_DOT)
        views = list(mode.customers(progress))
        progress.done()
    if args.json:
        emit(args, {"object": "list", "data": views}, None)
        return 0
    if not views:
        print("no customers", file=sys.stderr)
        return 0
    table(["CUSTOMER", "PLAN", "ACTIVE", "SOURCE", "REQUESTS", "TOKENS", "AMOUNT DUE", "CAP", "REMAINING"],
          [[v["id"], v["plan"], "yes" if v["active"] else "no", v["source"], v["usage"]["requests"],
            v["usage"]["tokens"]["total"], f"{v['usage']['amount_due']} {v['usage']['currency']}",
            v["usage"]["cap"], v["usage"]["remaining"]] for v in views])
    return 0


def customers_show(args) -> int:
    with backend(args) as mode:
        emit(args, mode.customer(args.customer), print_customer)
    return 0


def customers_update(args) -> int:
    given = [name for name in CUSTOMER_OPTIONS if getattr(args, name) is not None]
    if not given:
        raise Failure("nothing to update: give --plan, --cap, --cap-action, --cap-mode, --rpm, --tpm, --models, "
                      "--metadata or --anchor-day", EXIT_BAD_INPUT)
    with backend(args) as mode:
        needs_current = any(getattr(args, n) is not None for n in ("cap_action", "cap_mode", "rpm", "tpm")) or (
            args.cap is not None and not _none(args.cap))
        current = mode.customer(args.customer) if needs_current else None
        emit(args, mode.update_customer(args.customer, customer_body(args, current)), print_customer)
    return 0


def customers_deactivate(args) -> int:
    with backend(args) as mode:
        done = mode.deactivate_customer(args.customer)
    emit(args, done, lambda d: print(f"customer {d['id']} deactivated: its keys are refused from now on; "
                                     "its events, statements and evidence stay"))
    return 0


def keys_create(args) -> int:
    if args.url:
        with backend(args) as mode:
            made = mode.create_key(args.customer, key_body(args))
        return _show_new_key(args, made)
    with backend(args) as mode:
        customer = mode.config.customers.get(args.customer)
        if customer is None or customer.source == "api" or args.runtime:
            return _show_new_key(args, mode.create_key(args.customer, key_body(args)))
        source = mode.file_config.source
    # a customer of the config file: its keys are the file's, as they always were (or --runtime)
    given = [f"--{name.replace('_', '-')}" for name in KEY_OPTIONS if getattr(args, name) is not None]
    if given:
        raise Failure(f"{', '.join(given)}: only for keys kept in the ledger database; customer "
                      f"{args.customer!r} is declared in {source}: add --runtime", EXIT_BAD_INPUT)
    from config.schema import key_id
    from proxy.admin_ops import new_key

    key, digest = new_key()
    made = {"id": key_id(digest), "object": "api_key", "key": key, "customer": args.customer, "source": "config",
            "hash": f"sha256:{digest}"}
    if args.json:
        emit(args, made, None)
    elif args.quiet:
        print(key)
    else:
        print(f"key:    {key}")
        print(f"id:     {made['id']}")
        print(f"config: add \"sha256:{digest}\" to customers.{args.customer}.keys in {source}")
    print(SHOWN_ONCE + f" It works once its hash is in {source} and the proxy reloaded it.", file=sys.stderr)
    return 0


def _show_new_key(args, made: dict) -> int:
    if args.json:
        emit(args, made, None)
    elif args.quiet:
        print(made["key"])
    else:
        print_key(made)
    print(SHOWN_ONCE, file=sys.stderr)
    return 0


def keys_list(args) -> int:
    with backend(args) as mode:
        if args.customer is not None:
            keys = mode.keys(args.customer)
        else:
            keys, progress = [], Progress("customers", CUSTOMERS_PER_DOT)
            for customer_id in mode.customer_ids():
                keys += [k for k in mode.keys(customer_id) if k["revoked_at"] is None]
                progress.step()
            progress.done()
    if args.json:
        emit(args, {"object": "list", "data": keys}, None)
    elif args.customer is None:
        for key in keys:  # `customer<TAB>key id`, one live key a line, as before runtime keys existed
            print(f"{key['customer']}\t{key['id']}")
    elif keys:
        now = datetime.now(timezone.utc).isoformat()
        table(["KEY", "NAME", "PREFIX", "SOURCE", "CREATED", "LAST USED", "EXPIRES", "STATUS"],
              [[k["id"], k["name"] or "-", k["prefix"], k["source"], _when(k["created_at"]), _when(k["last_used_at"]),
                _when(k["expires_at"]),
                "revoked" if k["revoked_at"] else "expired" if k["expires_at"] and k["expires_at"] <= now else "active"]
               for k in keys])
    if not keys:
        print(f"no keys{'' if args.customer is None else f' for {args.customer!r}'}", file=sys.stderr)
    return 0


def keys_revoke(args) -> int:
    with backend(args) as mode:
        declared = None if args.url else mode.file_key(args.key_id)
        if declared is None:
            done = mode.revoke_key(args.key_id)
            emit(args, done, lambda d: print(f"revoked {d['id']}: refused from now on (a proxy sharing the "
                                             "database applies it within a second)"))
            return 0
        source = mode.file_config.source
    return revoke_in_file(args.key_id, *declared, source)


def revoke_in_file(kid: str, customer: str, entry: str, source: str) -> int:
    """Delete a key's hash from the config file; the file is rewritten only if it stays valid."""
    from pathlib import Path

    from config.loader import parse_config

    path = Path(source)
    text = path.read_text(encoding="utf-8")
    quoted = rf"""["']?{re.escape(entry)}["']?"""
    # a flow list item (with its comma) or a block list line, whichever the file uses
    edited, count = re.subn(rf"{quoted}\s*,\s*|,\s*{quoted}|{quoted}|^\s*-\s*{quoted}[^\n]*\n", "", text,
                            count=1, flags=re.M)
    edited = re.sub(r"^\s*-\s*$\n", "", edited, flags=re.M)
    try:
        remaining = parse_config(edited, source=str(path), env=os.environ)
    except ConfigError as exc:
        raise Failure(f"not revoked, the edited file would be invalid:\n{exc}", EXIT_BAD_INPUT) from None
    if count != 1 or entry in remaining.customers[customer].keys:
        raise Failure(f"could not find {entry} in the text of {path}; remove it by hand")
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(edited, encoding="utf-8")
        os.replace(tmp, path)  # atomic: the file is old or new, never half written
    except OSError as exc:
        raise Failure(f"not revoked: cannot write {path}: {exc.strerror or exc}") from None
    print(f"revoked {kid} of {customer} in {path}; reload the proxy (SIGHUP or POST /v1/admin/reload) to apply")
    return 0


def keys_rotate(args) -> int:
    with backend(args) as mode:
        made = mode.rotate_key(args.key_id, _whole(args.grace))
    return _show_new_key(args, made)


def usage_summary(args) -> int:
    if args.all or args.customer is None:
        if args.customer is not None:
            raise Failure("give CUSTOMER or --all, not both", EXIT_BAD_INPUT)
        if not args.all:
            raise Failure("give a CUSTOMER (or --all for every customer)", EXIT_BAD_INPUT)
        return usage_all(args)
    if args.csv:
        raise Failure("--csv is for every customer's table: add --all", EXIT_BAD_INPUT)
    with backend(args) as mode:
        summary = mode.summary(args.customer)
    emit(args, summary, print_summary)
    return 0


def usage_all(args) -> int:
    with backend(args) as mode:
        progress = Progress("customers", CUSTOMERS_PER_DOT)
        rows = mode.all_usage(args.period, progress)
        progress.done()
    if args.csv:
        write_csv(rows)
    else:
        emit(args, {"object": "list", "data": rows, "has_more": False}, lambda d: print_usage_rows(d["data"]))
    return 0


def usage_export(args) -> int:
    from config.loader import load_config
    from metering.store.ledger import Ledger

    config = load_config(args.config)
    start, end = _instant(args.start, "--from"), _instant(args.end, "--to")
    ledger = Ledger(config.storage.ledger)
    progress = Progress("events", EVENTS_PER_DOT)
    try:
        for event in ledger.events(customer=args.customer, start=start, end=end):
            sys.stdout.write(event.to_json() + "\n")
            progress.step()
    finally:
        ledger.close()
    progress.done()
    if progress.count == 0:
        known = args.customer in config.customers or _in_directory(config, args.customer)
        if not known:
            raise Failure(f"no customer {args.customer!r} and no events of it in the ledger")
        within = " in that range" if start or end else ""
        print(f"payware: no events of {args.customer!r}{within}", file=sys.stderr)
    return 0


def _in_directory(config, customer_id: str) -> bool:
    """Whether the ledger database's directory knows `customer_id` (a runtime customer)."""
    from metering.store.directory import DirectoryStore
    from metering.store.ledger import Ledger

    ledger = Ledger(config.storage.ledger)
    try:
        return DirectoryStore(ledger.engine).customer(customer_id) is not None
    finally:
        ledger.close()


def _instant(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Failure(f"{flag} {value!r} is not an ISO 8601 time", EXIT_BAD_INPUT) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# -- prices -------------------------------------------------------------------------------------

def _classes(price) -> dict[str, str]:
    from metering.store.events import decimal_str

    return {name: decimal_str(value) for name, value in price.per_class().items()}


def _price_json(price) -> dict:
    return {"per_million": _classes(price), "source": price.source,
            "effective_from": price.effective_from.isoformat() if price.effective_from else None,
            "above": [{"input_tokens_over": threshold, "per_million": _classes(higher)}
                      for threshold, higher in price.above]}


def litellm_entry(name: str) -> tuple[str, dict] | None:
    """litellm's price entry for `name` (also without a `provider/` prefix), and the name it is under."""
    from config import pricedb

    entry = pricedb.lookup(name)
    if entry is None:
        return None
    tail = name.split("/", 1)[1] if "/" in name else None
    return (tail if tail is not None and pricedb.lookup(tail) is entry else name), entry


def price_info(config, name: str) -> dict | None:
    """What `payware prices MODEL` shows: the config's price (configured models) and litellm's."""
    from config import pricedb

    model = config.models.get(name)
    found = litellm_entry(model.upstream if model else name)
    litellm = None
    if found is not None:
        listed, entry = found
        price = pricedb.price_of(entry)
        if price is not None:
            litellm = {"name": listed, "provider": entry.get("litellm_provider"), "mode": entry.get("mode"),
                       "max_input_tokens": entry.get("max_input_tokens"),
                       "max_output_tokens": entry.get("max_output_tokens"), **_price_json(price)}
    if model is None:
        if litellm is None:
            return None
        return {"model": name, "configured": False, "provider": litellm["provider"], "upstream": None,
                "mode": litellm["mode"], "max_output_tokens": litellm["max_output_tokens"],
                **{k: litellm[k] for k in ("per_million", "source", "effective_from", "above")}, "litellm": litellm}
    now = datetime.now(timezone.utc)
    return {"model": name, "configured": True, "provider": model.provider, "upstream": model.upstream,
            "mode": model.mode, "max_output_tokens": model.max_output_tokens, **_price_json(model.price_at(now)),
            "prices": [_price_json(p) for p in model.prices], "litellm": litellm}


def print_price(info: dict) -> None:
    rows = []

    def add(label: str, price: dict) -> None:
        rows.append([label, *price["per_million"].values()])
        rows.extend([f"{label}, prompt over {a['input_tokens_over']} tokens", *a["per_million"].values()]
                    for a in price["above"])

    if info["configured"]:
        print(f"{info['model']}: configured (provider {info['provider']}, upstream {info['upstream']}, "
              f"{info['mode']}); the price in force comes from {'the config' if info['source'] == 'config' else 'litellm'}")
        for price in info["prices"]:
            since = f" from {price['effective_from']}" if price["effective_from"] else ""
            add(f"config{since}" if price["source"] == "config" else "config: litellm's", price)
    else:
        print(f"{info['model']}: not configured; litellm's price data has it")
    litellm = info["litellm"]
    if litellm is not None:
        add(f"litellm {litellm['name']}", litellm)
    table(["USD PER 1M TOKENS", "INPUT", "CACHED INPUT", "CACHE WRITE", "CACHE WRITE 1H", "OUTPUT"], rows)
    if litellm is not None:
        print(f"litellm: provider {litellm['provider']}, mode {litellm['mode']}, max input "
              f"{litellm['max_input_tokens'] or '-'}, max output {litellm['max_output_tokens'] or '-'} tokens")


def prices(args) -> int:
    from config.loader import load_config

    config = load_config(args.config)
    if args.model is not None:
        info = price_info(config, args.model)
        if info is None:
            raise Failure(f"no model {args.model!r} in {config.source} or in litellm's price data")
        emit(args, info, print_price)
        return 0
    infos = [price_info(config, name) for name in config.models]
    if args.json:
        emit(args, {"object": "list", "data": infos}, None)
        return 0
    table(["MODEL", "PROVIDER", "UPSTREAM", "INPUT", "CACHED INPUT", "CACHE WRITE", "CACHE WRITE 1H", "OUTPUT",
           "SOURCE", "ABOVE"],
          [[i["model"], i["provider"], i["upstream"], *i["per_million"].values(), i["source"],
            ", ".join(str(a["input_tokens_over"]) for a in i["above"]) or "-"] for i in infos])
    print("USD per 1M tokens; `payware prices MODEL` for one model (any of litellm's) in detail")
    return 0


# -- the parser ---------------------------------------------------------------------------------

def guarded(command):
    """Run a command; any failure is one line on stderr and an exit code, never a traceback
    (a config error goes up to `proxy.cli.main`, which prints every problem of the file)."""
    def run(args) -> int:
        try:
            return command(args)
        except ConfigError:
            raise
        except Failure as exc:
            failure = exc
        except BrokenPipeError:  # `payware … | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except KeyboardInterrupt:
            return 130
        except Exception as exc:
            failure = _failure_of(exc)
            if os.environ.get("PAYWARE_DEBUG"):
                raise
        print(f"payware: {failure.message}", file=sys.stderr)
        return failure.exit_code
    return run


def _failure_of(exc: Exception) -> Failure:
    errors = sys.modules.get("proxy.errors")
    if errors is not None and isinstance(exc, errors.ApiError):  # the admin API's validators, in direct mode
        return api_failure(exc.status, exc.message, exc.param, exc.code)
    sqlalchemy = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy is not None and isinstance(exc, sqlalchemy.SQLAlchemyError):
        return Failure(f"the ledger database failed: {first_line(exc)}")
    return Failure(f"unexpected {type(exc).__name__}: {first_line(exc)} (PAYWARE_DEBUG=1 shows the traceback)")


def register(sub) -> None:
    """Add `customers`, `keys`, `usage` and `prices` to the `payware` parser's subcommands."""
    config_default = os.environ.get("PAYWARE_CONFIG")

    def command(group, name: str, run, help: str, *, modes: bool = True, json_out: bool = True):
        p = group.add_parser(name, help=help, description=help)
        p.add_argument("--config", metavar="FILE", default=config_default,
                       help="admin config file, whose ledger database is used without --url "
                            "(default: $PAYWARE_CONFIG, else the embedded default)")
        if modes:
            p.add_argument("--url", metavar="URL", help="a running proxy (http://HOST:PORT): use its admin API")
            p.add_argument("--admin-key", metavar="KEY", help="the admin key for --url (default: $PAYWARE_ADMIN_KEY)")
        if json_out:
            p.add_argument("--json", action="store_true", help="print JSON (the admin API's), for scripts")
        p.set_defaults(run=guarded(run))
        return p

    def limits(p, *, customer: bool) -> None:
        p.add_argument("--cap", metavar="AMOUNT", help="spend cap per period, e.g. 50.00 (`none`: no cap)")
        if customer:
            p.add_argument("--cap-action", metavar="block|throttle|notify", help="what happens at the cap")
            p.add_argument("--cap-mode", metavar="hard|soft", help="hard: in-flight calls count too")
        p.add_argument("--rpm", metavar="N", help="requests per minute (`none`: no limit)")
        p.add_argument("--tpm", metavar="N", help="tokens per minute (`none`: no limit)")
        p.add_argument("--models", metavar="A,B", help="the models allowed (`all`: every configured model)")

    customers = sub.add_parser("customers", help="customers: create, list, show, update, deactivate",
                               description="Customers, through a proxy's admin API (--url) or on the "
                                           "ledger database of --config.").add_subparsers(metavar="ACTION")
    for name, run, help in (("create", customers_create, "create a customer (kept in the ledger database)"),
                            ("update", customers_update, "change a runtime customer (unset options stay)")):
        p = command(customers, name, run, help)
        p.add_argument("customer", metavar="CUSTOMER")
        p.add_argument("--plan", required=name == "create", help="a plan of the config")
        limits(p, customer=True)
        p.add_argument("--metadata", metavar="JSON", help="a JSON object, e.g. '{\"crm\": \"42\"}'")
        p.add_argument("--anchor-day", metavar="DAY", help="day of the month monthly periods start on (1-31)")
    command(customers, "list", customers_list, "every customer, with its open period's usage")
    command(customers, "show", customers_show, "one customer and its open period's usage").add_argument("customer")
    command(customers, "deactivate", customers_deactivate,
            "deactivate a runtime customer: its keys stop working; its events stay").add_argument("customer")

    keys = sub.add_parser("keys", help="customer keys: create, list, revoke, rotate").add_subparsers(metavar="ACTION")
    p = command(keys, "create", keys_create, "a new key for CUSTOMER, printed once (kept as a hash in the ledger "
                                             "database; without --url, for a customer of the config file: the hash "
                                             "to add to it)")
    p.add_argument("customer")
    p.add_argument("--name", help="a label for people")
    p.add_argument("--expires-at", metavar="TIME", help="ISO 8601 time or unix timestamp")
    limits(p, customer=False)
    p.add_argument("--runtime", action="store_true",
                   help="for a customer of the config file: keep the key in the ledger database, in force at once")
    p.add_argument("-q", "--quiet", action="store_true", help="print the key alone: KEY=$(payware keys create … -q)")
    p = command(keys, "list", keys_list, "a customer's keys (never the keys themselves); without CUSTOMER, "
                                         "`customer<TAB>key id` for every live key")
    p.add_argument("customer", nargs="?")
    command(keys, "revoke", keys_revoke, "revoke a key by its id (`keys list`); without --url, a key of the "
                                         "config file is removed from the file").add_argument("key_id")
    p = command(keys, "rotate", keys_rotate, "a new key with the same name and limits; the old one works for "
                                             "--grace seconds only")
    p.add_argument("key_id")
    p.add_argument("--grace", metavar="SECONDS", default="0", help="how long the old key keeps working (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="print the new key alone")

    usage = sub.add_parser("usage", help="usage: a customer's summary, every customer's, the events").add_subparsers(
        metavar="ACTION")
    p = command(usage, "summary", usage_summary, "a customer's open period: every field of GET /v1/usage/summary "
                                                 "(with --url real time; else from the ledger)")
    p.add_argument("customer", nargs="?")
    p.add_argument("--all", action="store_true", help="every customer's, as `usage all`")
    p.add_argument("--csv", action="store_true", help="with --all: CSV")
    p.add_argument("--period", default="current", help="with --all: current, YYYY-MM or YYYY-MM-DD")
    p = command(usage, "all", usage_all, "every customer: plan, requests, tokens, amount due, cap, remaining")
    p.add_argument("--csv", action="store_true", help="CSV, every column of GET /v1/admin/usage?format=csv")
    p.add_argument("--period", default="current", help="current, YYYY-MM or YYYY-MM-DD")
    p = command(usage, "export", usage_export, "a customer's events as JSON lines, from the ledger",
                modes=False, json_out=False)
    p.add_argument("customer")
    p.add_argument("--from", dest="start", help="ISO 8601 start (inclusive)")
    p.add_argument("--to", dest="end", help="ISO 8601 end (exclusive)")

    p = command(sub, "prices", prices, "the price of each configured model, or of MODEL: any model of litellm's "
                                       "price data, every token class", modes=False)
    p.add_argument("model", nargs="?", metavar="MODEL")
