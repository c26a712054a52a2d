"""The operator console's HTML, built from plain data (every value escaped; no script inline).

Each function returns `Html` for the `console.html` layout's body. Forms carry the session's
CSRF token (`csrf`); the console's handlers check it on every post.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from urllib.parse import quote

from proxy.web.assets import Html, esc


def money(value: str | Decimal | None, currency: str = "USD") -> str:
    """An amount for people: cents, or more places for a fraction of a cent."""
    if value is None:
        return "—"
    amount = Decimal(value)
    text = f"{amount:,.2f}" if amount == amount.quantize(Decimal("0.01")) or abs(amount) >= 1 else f"{amount:,.6f}"
    return f"${text}" if currency == "USD" else f"{text} {currency}"


def exact_money(value: str | Decimal | None) -> str:
    """An amount with every place the API gives (a reconciliation compares fractions of a cent)."""
    return "no price" if value is None else f"${Decimal(value):,f}"


def count(value: int | None) -> str:
    """A count with thousands separators."""
    return "—" if value is None else f"{value:,}"


def _hidden(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{esc(csrf)}">'


def _table(head: list[str], rows: list[list[str]], empty: str, cls: str = "",
           narrow: tuple[int, ...] = ()) -> str:
    """A table; the columns numbered in `narrow` are hidden on a phone."""
    if not rows:
        return f'<p class="muted">{esc(empty)}</p>'

    def attr(i: int) -> str:
        return ' class="wide-only"' if i in narrow else ""

    ths = "".join(f"<th{attr(i)}>{esc(h)}</th>" for i, h in enumerate(head))
    trs = "".join("<tr>" + "".join(f"<td{attr(i)}>{cell}</td>" for i, cell in enumerate(row)) + "</tr>"
                  for row in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>{trs}</tbody></table></div>'


def _meter(spent: str | None, cap: str | None) -> str:
    if cap is None:
        return '<span class="muted">no cap</span>'
    limit, used = Decimal(cap), Decimal(spent or 0)
    share = 100 if limit == 0 else min(100, int(used * 100 / limit))
    level = "high" if share >= 90 else "mid" if share >= 70 else "low"
    return (f'<span class="spent"><meter class="{level}" min="0" max="100" low="70" high="90" optimum="0" '
            f'value="{share}"></meter> <span class="num">{share}%</span></span>')


def overview(*, customers: list[dict], models: list[dict], top: list[dict], traffic: list[dict],
             codes: list[tuple[str, int]], totals: dict, reconciliation: dict | None = None) -> Html:
    """The front page: totals, the last reconciliation's line, every customer against its cap,
    top models and customers, traffic."""
    tiles = "".join(f'<div class="tile"><span class="label">{esc(k)}</span><span class="value">{esc(v)}</span></div>'
                    for k, v in (("Amount due (all customers)", money(totals["amount"])),
                                 ("Requests this period", count(totals["requests"])),
                                 ("Tokens this period", count(totals["tokens"])),
                                 ("Customers", count(len(customers)))))
    rows = [[f'<a href="/admin/customers/{quote(c["id"], safe="")}">{esc(c["id"])}</a>'
             + ("" if c["active"] else ' <span class="tag">inactive</span>'),
             esc(c["plan"]), f'<span class="num">{count(c["requests"])}</span>',
             f'<span class="num">{count(c["tokens"])}</span>',
             f'<span class="num">{esc(money(c["amount_due"], c["currency"]))}</span>',
             f'<span class="num">{esc(money(c["cap"], c["currency"]))}</span>', _meter(c["spent"], c["cap"])]
            for c in customers]
    model_rows = [[esc(m["model"]), f'<span class="num">{count(m["requests"])}</span>',
                   f'<span class="num">{count(m["tokens"])}</span>', f'<span class="num">{esc(money(m["amount"]))}</span>']
                  for m in models]
    top_rows = [[f'<a href="/admin/customers/{quote(c["id"], safe="")}">{esc(c["id"])}</a>',
                 f'<span class="num">{count(c["requests"])}</span>',
                 f'<span class="num">{esc(money(c["amount_due"], c["currency"]))}</span>'] for c in top]
    code_list = "".join(f"<li><code>{esc(code)}</code> <span class=\"num\">{n:,}</span></li>" for code, n in codes)
    last = traffic[-1] if traffic else {}
    return Html(f"""
<section class="tiles">{tiles}</section>
{last_reconciliation(reconciliation)}
<section class="card wide"><h2>Customers <small>spend this period against the cap</small></h2>
{_table(["Customer", "Plan", "Requests", "Tokens", "Amount due", "Cap", "Spent"], rows, "No customers yet.",
        "customers", narrow=(1, 2, 3))}</section>
<div class="columns">
<section class="card"><h2>Top models <small>this period</small></h2>
{_table(["Model", "Requests", "Tokens", "Amount"], model_rows, "No usage this period.")}</section>
<section class="card"><h2>Top customers <small>this period</small></h2>
{_table(["Customer", "Requests", "Amount due"], top_rows, "No usage this period.")}</section>
</div>
<section class="card wide" id="traffic"><h2>Requests, refusals and errors <small>last {len(traffic)} hours, this proxy</small></h2>
{traffic_svg(traffic)}
<p class="legend"><span><i class="key ok"></i>served</span> <span><i class="key invalid"></i>invalid (4xx)</span>
<span><i class="key refused"></i>refused (401/403/429)</span> <span><i class="key errors"></i>errors (5xx)</span></p>
<p>This hour: <b id="hour-requests">{count(last.get("requests", 0))}</b> requests,
<b id="hour-refused">{count(last.get("refused", 0))}</b> refused, <b id="hour-errors">{count(last.get("errors", 0))}</b> errors.</p>
{f'<h3>Refusal and error codes</h3><ul class="codes">{code_list}</ul>' if code_list else ''}
</section>""")


def last_reconciliation(run: dict | None) -> str:
    """One line on the front page: the last run's range and what the provider counted beyond Payware."""
    if run is None:
        return ""
    href = "/admin/reconciliation?provider=" + quote(run["provider"], safe="")
    return (f'<p class="last-run" id="last-reconciliation"><a href="{esc(href)}">Last reconciliation '
            f'({esc(run["provider"])}, {esc(run["from"])} → {esc(run["to"])})</a>: provider-only '
            f'<b class="num">{esc(exact_money(run["totals"]["provider_only"]["cost"]))}</b>, Payware-only '
            f'<span class="num">{esc(exact_money(run["totals"]["payware_only"]["cost"]))}</span> '
            f'{_status_tag(run["status"])}</p>')


# A run's or a row's status (metering.billing.reconcile) -> the tag's colour.
_STATUS_CLASS = {"matched": "ok", "differences": "error", "provider_only": "error", "payware_only": "error",
                 "mismatch": "error"}


def _status_tag(status: str) -> str:
    return f'<span class="tag {_STATUS_CLASS.get(status, "")}">{esc(status)}</span>'


def _providers(current: str | None, providers: list[str]) -> str:
    """Links to the last run of any provider, or of each one the config can reconcile."""
    links = [("any", "/admin/reconciliation", current is None)]
    links += [(name, "/admin/reconciliation?provider=" + quote(name, safe=""), name == current) for name in providers]
    items = " · ".join(f"<b>{esc(name)}</b>" if chosen else f'<a href="{esc(href)}">{esc(name)}</a>'
                       for name, href, chosen in links)
    return f'<p class="muted">Provider: {items}</p>'


def reconciliation(*, run: dict | None, provider: str | None, providers: list[str]) -> Html:
    """The last `payware reconcile` run (`GET /v1/admin/reconciliation`'s body): what it compared,
    the totals, one row per day and model, the notes. Costs are shown with every place."""
    picker = _providers(provider, providers)
    if run is None:
        which = f" of provider {provider}" if provider else ""
        return Html(f"""
<h1>Reconciliation</h1>
{picker}
<section class="card" id="no-reconciliation"><h2>No reconciliation{esc(which)} has run yet</h2>
<p>Run <code>payware reconcile {esc(provider or "PROVIDER")} --from YYYY-MM-DD --to YYYY-MM-DD</code>
(with the provider's <code>admin_key</code> in the config, or <code>--file REPORT.json</code> exported from its
usage page): it compares the provider's count with Payware's, day by day and model by model, and keeps the run
for this page.</p></section>""")
    totals = run["totals"]
    tiles = "".join(
        f'<div class="tile" id="total-{block.replace("_", "-")}"><span class="label">{esc(label)}</span>'
        f'<span class="value">{esc(exact_money(totals[block]["cost"]))}</span>'
        f'<span class="sub">{count(totals[block]["tokens"]["total"])} tokens</span></div>'
        for block, label in (("matched", "Matched"), ("provider_only", "Provider-only (never billed)"),
                             ("payware_only", "Payware-only"), ("estimated", "Estimated by Payware")))
    rows = [[f'<span class="num">{esc(row["day"])}</span>', esc(row["model"]), _status_tag(row["status"]),
             f'<span class="num">{count(row["provider"]["tokens"]["total"])}</span>',
             f'<span class="num">{count(row["payware"]["tokens"]["total"])}</span>',
             f'<span class="num">{esc(exact_money(row["provider_only"]["cost"]))}</span>',
             f'<span class="num">{esc(exact_money(row["payware_only"]["cost"]))}</span>',
             f'<span class="num">{count(row["estimated"]["tokens"]["total"])}</span>']
            for row in run["rows"]]
    keys = run.get("api_key_ids") or []
    notes = "".join(f"<li>{esc(note)}</li>" for note in run.get("notes") or [])
    return Html(f"""
<h1>Reconciliation <small>{esc(run["provider"])} · kind {esc(run["kind"])} · from {esc(run["source"])}</small></h1>
{picker}
<p class="muted" id="run">Days {esc(run["from"])} → {esc(run["to"])} (UTC, both included) ·
ran {esc(run["created_at"][:19].replace("T", " "))} UTC · <code>{esc(run["id"])}</code>{
    f" · provider keys {esc(', '.join(keys))}" if keys else ""} · {_status_tag(run["status"])}</p>
<section class="tiles">{tiles}</section>
<p class="muted">The provider counted {count(totals["provider"]["tokens"]["total"])} tokens
({esc(exact_money(totals["provider"]["cost"]))}), Payware {count(totals["payware"]["tokens"]["total"])}
({esc(exact_money(totals["payware"]["cost"]))}), at the provider's price in {esc(run.get("currency", "USD"))}.</p>
<section class="card wide" id="rows"><h2>By day and model</h2>
{_table(["Day", "Model", "Status", "Provider tokens", "Payware tokens", "Provider-only cost", "Payware-only cost",
         "Estimated tokens"], rows, "No usage on either side in this range.", "reconciliation", narrow=(3, 4, 6, 7))}
</section>
{f'<section class="card wide" id="notes"><h2>Notes</h2><ul>{notes}</ul></section>' if notes else ""}""")


def traffic_svg(rows: list[dict]) -> str:
    """Stacked bars per hour: an SVG stretched to the card's width (no text in it, so nothing is
    scaled unreadable on a phone), the hours and the peak as HTML. No script needed."""
    peak = max([r["requests"] for r in rows] + [1])
    bars = []
    for i, row in enumerate(rows):
        y = 100.0
        for kind in ("ok", "invalid", "refused", "errors"):
            h = 100.0 * row[kind] / peak
            if h > 0:
                y -= h
                bars.append(f'<rect class="{kind}" x="{i * 10 + 1}" y="{y:.2f}" width="8" height="{h:.2f}">'
                            f'<title>{row[kind]} {kind}</title></rect>')
    hours = "".join(f"<span>{datetime.fromtimestamp(r['hour'], timezone.utc):%H}h</span>" for r in rows)
    return (f'<div class="hours"><span class="peak">peak {peak:,} / hour</span>'
            f'<svg class="bars" viewBox="0 0 {len(rows) * 10} 100" preserveAspectRatio="none" role="img" '
            f'aria-label="requests per hour">{"".join(bars)}</svg>'
            f'<div class="hour-labels">{hours}</div></div>')


def customer_page(*, customer: dict, usage: dict, keys: list[dict], statements: list[dict], csrf: str,
                  notice: str = "") -> Html:
    """One customer: usage and cap, keys (create, revoke, rotate), statements, evidence, portal link."""
    cid = quote(customer["id"], safe="")
    cap = usage.get("cap")
    key_rows = []
    for key in keys:
        actions = ""
        if key["source"] == "api" and key["revoked_at"] is None:
            kid = quote(key["id"], safe="")
            actions = (f'<form method="post" action="/admin/keys/{kid}/revoke" class="inline" data-confirm="Revoke this key?">'
                       f'{_hidden(csrf)}<button class="danger">Revoke</button></form> '
                       f'<form method="post" action="/admin/keys/{kid}/rotate" class="inline">{_hidden(csrf)}'
                       f'<input type="number" name="grace_seconds" value="3600" min="0" max="2592000" '
                       f'aria-label="grace seconds" class="small"><button>Rotate</button></form>')
        state = ("revoked" if key["revoked_at"] else "expires " + key["expires_at"][:16] if key["expires_at"]
                 else "active")
        key_rows.append([f'<code>{esc(key["id"])}</code>', esc(key["name"] or "—"), esc(key["prefix"] or "—"),
                         esc(key["source"]), esc((key["created_at"] or "—")[:16]), esc(state), actions])
    statement_rows = [[esc(s["start"][:10]) + " → " + esc(s["end"][:10]),
                       f'<span class="num">{esc(money(s["total"], s["currency"]))}</span>',
                       f'<span class="num">{count(s["events"])}</span>',
                       f'<a href="/admin/customers/{cid}/statement.csv?period={quote(s["period"], safe="")}">CSV</a>']
                      for s in statements]
    notice_html = f'<p class="notice">{esc(notice)}</p>' if notice else ""
    return Html(f"""
<p><a href="/admin">← all customers</a></p>
<h1>{esc(customer["id"])} <small>plan {esc(customer["plan"])}{"" if customer["active"] else " · inactive"}</small></h1>
{notice_html}
<section class="tiles">
<div class="tile"><span class="label">Amount due</span><span class="value" id="amount-due">{esc(money(usage["amount_due"], usage["currency"]))}</span></div>
<div class="tile"><span class="label">Requests</span><span class="value">{count(usage["requests"])}</span></div>
<div class="tile"><span class="label">Tokens</span><span class="value">{count(usage["tokens"]["total"])}</span></div>
<div class="tile"><span class="label">Cap</span><span class="value">{esc(money(cap["amount"]) if cap else "none")}</span>
{_meter(cap["spent"], cap["amount"]) if cap else ""}</div>
</section>
<p class="muted">Period {esc(usage["period"]["start"][:16])} → {esc(usage["period"]["end"][:16])} ({esc(usage["period"]["interval"])})</p>
<section class="card wide" id="keys"><h2>Keys</h2>
{_table(["Id", "Name", "Prefix", "Source", "Created", "State", ""], key_rows, "No keys.", narrow=(2, 3, 4))}
<form method="post" action="/admin/customers/{cid}/keys" class="row" id="create-key">{_hidden(csrf)}
<label>Name <input name="name" maxlength="128" placeholder="production"></label><button>Create key</button></form>
</section>
<div class="columns">
<section class="card"><h2>Statements</h2>
{_table(["Period", "Total", "Events", ""], statement_rows, "No closed period yet.")}</section>
<section class="card"><h2>Evidence export</h2>
<form method="get" action="/admin/customers/{cid}/events.csv" class="stack">
<label>From <input type="date" name="from"></label><label>To <input type="date" name="to"></label>
<label>Session <input name="session" maxlength="256"></label><button>Download CSV</button></form>
<h2>Portal link</h2>
<form method="post" action="/admin/customers/{cid}/portal_link" class="row">{_hidden(csrf)}
<label>Valid for <select name="expires_in"><option value="3600">1 hour</option><option value="86400">1 day</option>
<option value="604800">7 days</option></select></label><button>Make link</button></form></section>
</div>""")


def secret_shown(*, title: str, what: str, value: str, back: str, extra: str = "") -> Html:
    """A key (or a link) shown this once: the page is not cached and nothing keeps it."""
    return Html(f"""
<section class="card secret"><h1>{esc(title)}</h1>
<p>{esc(what)}</p>
<p><code class="secret-value" id="secret-value">{esc(value)}</code></p>
{f'<p class="muted">{esc(extra)}</p>' if extra else ''}
<p><a href="{esc(back)}">Done</a></p></section>""")
