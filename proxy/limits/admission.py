"""Admission: rate limits and spend caps, decided before any byte goes to a provider.

The worst-case cost of a call (its prompt counted with tiktoken, plus `max_tokens`, else the
model's max output) is reserved against every cap that applies, in one atomic step. When the
response ends the reservation is settled with the actual amount; when the provider failed
before generating anything it is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from config.schema import MAX_OUTPUT_TOKENS, CustomerConfig, ModelConfig, PlanConfig
from metering.limits.budget import MAX_UNITS, NANO, BudgetStore, Decision, Hold, MemoryBudget, Scope, to_units
from metering.usage.tokens import count_text, encoding_for
from metering.usage.tokens import loaded as tokens_loaded
from metering.limits.reservations import Recovering, Reservations, Source
from metering.store.events import decimal_str, money_str
from metering.billing.plans import max_tokens_amount
from metering.limits.ratelimit import MAX_TOKENS as RATE_MAX_TOKENS
from metering.limits.outages import store_down
from metering.limits.ratelimit import Limit, MemoryRateLimiter, RateDecision, RateLimiter
from metering.usage.normalized import Usage
from metering.webhooks import Notifier
from proxy.limits.credits import CREDITS
from proxy.errors import CreditsExhausted, RateLimited, ServiceUnavailable, SpendCapReached

log = logging.getLogger("payware.admission")

DEFAULT_MAX_OUTPUT = 4096  # worst case for a model whose max output nobody knows
MERGE_WAIT = 5.0  # seconds a capped call waits for its customer's new cap to be merged


@dataclass(slots=True)
class Worst:
    """A call's worst case, and where it came from (for a refusal that explains itself)."""

    prompt: int
    output: int
    output_from: str | bool  # the request's field that set the output limit, or False: the model's maximum
    units: int = 0
    answers: int = 1  # answers generated side by side: `output` is theirs together


@dataclass(slots=True)
class Admitted:
    """What admission granted a call: settle or release it when the call ends."""

    customer: str
    key_id: str | None
    period: str
    scopes: tuple[str, ...]
    hold: Hold | None  # None when served past the cap (throttle, notify, soft)
    prompt_tokens: int
    rate: RateDecision | None
    cap_reached: bool = False  # served although the cap is reached (notify / throttle)
    clamped_max_tokens: int | None = None
    local: bool = False  # admitted on the in-process fallback while the shared store was down
    capped: bool = True  # False: no cap applies, so no reservation was made and none is settled
    rate_tokens: int = 0  # tokens charged to the TPM limits up front (prompt + max output)
    counted: bool = False  # whether prompt_tokens was counted (else 0: nothing needed it)
    credit_hold: Hold | None = None  # a credit_only customer's hold on its prepaid balance
    max_output: int = 0  # the output tokens reserved for
    max_output_from: str = "request"  # where that number came from: "request" | "model"


class Gate:
    """Decides, per call, whether it may go upstream; keyword-only dependencies."""

    def __init__(self, *, budget: BudgetStore, limiter: RateLimiter, source: Source, shared: bool = False,
                 reservation_ttl: float = 60.0, notifier: Notifier | None = None, fail_open: bool = False,
                 on_recovery: Callable[[], Awaitable[None]] | None = None):
        self.shared = (Reservations(store=budget, source=source, shared=shared, ttl=reservation_ttl), limiter)
        self.remote = shared  # the store is a server: what can go to it together should (`together`)
        # Both stores are this process's own: admission and settlement run without awaiting them
        # (one step, no coroutine per layer; they never fail over, so `_use` has nothing to do).
        self.inline = self.shared[0].inline and isinstance(limiter, MemoryRateLimiter)
        self.fallback = (Reservations(store=MemoryBudget(), source=source, shared=False, ttl=reservation_ttl),
                         MemoryRateLimiter()) if fail_open else None
        self.notifier = notifier
        self.on_recovery = on_recovery  # resync the shared counters from the ledger after an outage
        self.customer_caps: dict[str, Decimal] = {}  # customers' own, lower caps (kept in the ledger)
        self.customers: dict[str, CustomerConfig] = {}  # the customers in force (set by the app)
        self.capping: dict[str, int] = {}  # customers whose first cap is being applied (see `first_cap`)
        self._capped: dict[str, asyncio.Event] = {}  # set when that is done (what their reserves wait for)
        self.caps_version = 0  # bumped by each change made here
        self.store_down = False
        self._preloading: asyncio.Future | None = None
        self.credits = None  # proxy.limits.credits.CreditBook, set by the app
        self.plans: dict | None = None  # the plans in force (for a settle's top-up check), set by the app

    @property
    def budget(self) -> Reservations:
        return self.shared[0]

    async def run(self) -> None:
        """Renew the holds of calls in flight, on the shared store and the fallback (cancel to stop)."""
        loops = [self.shared[0].run(lambda: self.store_down)]
        if self.fallback is not None:
            loops.append(self.fallback[0].run())
        await asyncio.gather(*loops)

    async def _use(self, op: Callable, *, local: bool = False):
        """Run `op(budget, limiter)` on the shared store; on an outage apply the failure policy."""
        if not local:
            try:
                result = await op(*self.shared)
            except store_down() as exc:
                if not self.store_down:
                    log.error("counter store unreachable (%s): %s", type(exc).__name__,
                              "serving on in-process counters" if self.fallback else "refusing requests")
                self.store_down = True
                if self.fallback is None:
                    raise ServiceUnavailable("Spend counters are unavailable; the request was not forwarded. "
                                             "Retry shortly.", headers={"Retry-After": "1"}) from None
            else:
                if self.store_down:
                    self.store_down = False
                    log.warning("counter store is back")
                    if self.on_recovery is not None:
                        await self.on_recovery()
                return result, False
        return await op(*self.fallback), True

    def cap_amount(self, customer: CustomerConfig) -> Decimal | None:
        """The cap in force: the admin's, or the customer's own when lower."""
        own = self.customer_caps.get(customer.id)
        admin = customer.cap.amount if customer.cap is not None else None
        if own is None:
            return admin
        return own if admin is None else min(own, admin)

    def scopes(self, customer: CustomerConfig, key_id: str | None) -> tuple[Scope, ...]:
        """The caps a call counts against: its customer's, and its key's if the key has one.
        Built once per customer config (a reloaded or edited customer is a new object), key
        and own cap, as each capped call needs them."""
        own = self.customer_caps.get(customer.id)
        cached = _SCOPES.get((id(customer), key_id))
        if cached is not None and cached[0] is customer and cached[1] == own:
            return cached[2]
        amount = self.cap_amount(customer)
        mode = customer.cap.mode if customer.cap is not None else "hard"
        scopes = [Scope(name="customer", limit=_units(amount) if amount is not None else None, mode=mode)]
        if key_id is not None and key_id in customer.key_caps:
            scopes.append(Scope(name=f"key:{key_id}", limit=_units(customer.key_caps[key_id]), mode=mode))
        if len(_SCOPES) >= 65536:
            _SCOPES.clear()
        _SCOPES[(id(customer), key_id)] = (customer, own, tuple(scopes))
        return tuple(scopes)

    def capped(self, customer: CustomerConfig) -> bool:
        """Whether any cap applies to the customer (the admin's, its own, or a key's)."""
        return customer.cap is not None or bool(customer.key_caps) or customer.id in self.customer_caps

    def newly_capped(self, customers: dict[str, CustomerConfig]) -> list[CustomerConfig]:
        """Take the customers of a new config; those that had no cap and now have one (their
        period must be merged again: their uncapped calls were never spent against it)."""
        before, self.customers = self.customers, customers
        return [c for c in customers.values()
                if self.capped(c) and c.id in before and not self.capped(before[c.id])]

    @contextlib.contextmanager
    def first_cap(self, customer_ids: Iterable[str]):
        """While customers' first caps are applied (their periods merged from the ledger), the
        calls they made before the cap and that end meanwhile already count against it: by event
        id, so the merge and the settle never count one twice. A call whose settle missed that
        would be billed and never counted against the cap. A capped call of theirs (the cap a
        reload gave is in force already) waits for the merge before it reserves."""
        ids = set(customer_ids)
        for customer_id in ids:  # counted: two first caps of one customer may overlap
            self.capping[customer_id] = self.capping.get(customer_id, 0) + 1
            self._capped.setdefault(customer_id, asyncio.Event())
        try:
            yield
        finally:
            for customer_id in ids:
                if self.capping[customer_id] == 1:
                    del self.capping[customer_id]
                    self._capped.pop(customer_id).set()
                else:
                    self.capping[customer_id] -= 1

    async def _merged(self, customer: CustomerConfig) -> None:
        """Wait (up to MERGE_WAIT s) while a cap a reload gave is being merged: a reserve before
        the merge would see the period without the calls made while the customer had no cap."""
        merged = self._capped.get(customer.id)
        if merged is None:
            return
        try:
            async with asyncio.timeout(MERGE_WAIT):
                await merged.wait()
        except TimeoutError:
            raise ServiceUnavailable("This customer's spend is being merged for its new cap; the request was not "
                                     "forwarded. Retry shortly.", headers={"Retry-After": "1"}) from None

    def _counts_late(self, customer: CustomerConfig) -> bool:
        """Whether a call admitted without a cap counts against one set since it started."""
        return customer.id in self.capping or self.capped(self.customers.get(customer.id, customer))

    async def admit(self, *, request_id: str, customer: CustomerConfig, key_id: str | None, plan: PlanConfig,
                    model: ModelConfig, fmt, body: dict, period: str, now: datetime, size: int = 0,
                    extra_prompt: int = 0) -> Admitted:
        """Rate limits and the cap's reservation for one call of wire format `fmt`; `size`: the
        body's bytes; `extra_prompt`: input the provider bills beyond the body (a chain)."""
        capped = self.capped(customer)
        needs_count = capped or (customer.rate_limit is not None and customer.rate_limit.tpm)
        prompt, exact = await self._bound_prompt(fmt, body, model, size) if needs_count else (0, False)
        prompt += extra_prompt if needs_count else 0
        requested = fmt.max_output(body)
        answers = fmt.answers(body)
        max_out = requested if requested is not None else _model_max_output(model) * answers
        tokens = min(prompt + max_out, RATE_MAX_TOKENS)  # charged to TPM limits up front
        field = getattr(fmt, "max_output_field", None)
        worst = Worst(prompt=prompt, output=max_out,
                      output_from=requested is not None and (field(body) if field else "the output limit"),
                      answers=answers)
        admitted = await self._admit(request_id, customer, key_id, plan, model, fmt.endpoint, period, now, capped,
                                     prompt, max_out, tokens, worst)
        admitted.counted = bool(needs_count) and exact
        admitted.max_output = max_out
        admitted.max_output_from = "request" if requested is not None else "model"
        if plan.credits is not None and plan.credits.mode == "credit_only":
            await self._hold_credits(admitted, request_id, customer, plan, model, prompt, max_out, now)
        return admitted

    async def _hold_credits(self, admitted: Admitted, request_id: str, customer: CustomerConfig, plan: PlanConfig,
                            model: ModelConfig, prompt: int, max_out: int, now: datetime) -> None:
        """Reserve the worst case against the prepaid balance too; refuse the call if it does not fit."""
        state = await self.credits.state(customer.id)
        worst = _units(_amount(model, plan, prompt, max_out, now))
        scope = Scope(name="credits", limit=state.limit_units, mode="hard")

        async def reserve(budget: Reservations, _limiter):
            try:
                return await budget.reserve(customer=customer.id, period=CREDITS, hold_id=f"{request_id}:credits",
                                            units=worst, scopes=[scope])
            except Recovering as recovering:
                raise ServiceUnavailable("Credit counters are being rebuilt after an outage; retry shortly.",
                                         headers={"Retry-After": _seconds(recovering.wait)}) from None

        try:
            decision, _ = await self._use(reserve, local=admitted.local)
        except BaseException:
            await self.release(admitted)
            raise
        if not decision.allowed:
            await self.release(admitted)
            left = Decimal(max(state.limit_units - decision.spent - decision.held, 0)) / NANO
            raise CreditsExhausted(
                f"Your prepaid credit balance (${decimal_str(left)} left) does not cover this request's worst case "
                f"(${decimal_str(Decimal(worst) / NANO)}). Add credits to continue, or lower the output limit.",
                headers={"x-should-retry": "false"})
        admitted.credit_hold = decision.hold

    async def count_prompt(self, fmt, body: dict, model: ModelConfig, size: int) -> int:
        """The prompt's tokens, exactly; in a worker thread for a large body or a tokenizer still
        to load (tiktoken releases the GIL), so one customer's 7 MB prompt does not stall every
        other request on the event loop."""
        if size < BIG_PROMPT and tokens_loaded(model.upstream):
            return fmt.prompt_tokens(body, model.upstream)
        return await asyncio.to_thread(fmt.prompt_tokens, body, model.upstream)

    async def count_output(self, text: str, model: ModelConfig) -> int:
        """The tokens of a call's output text (an estimate's), off the event loop as a prompt's:
        a provider's 10 MB answer without usage takes seconds to count."""
        if len(text) < BIG_PROMPT and tokens_loaded(model.upstream):
            return count_text(text, model.upstream)
        return await asyncio.to_thread(count_text, text, model.upstream)

    async def _bound_prompt(self, fmt, body: dict, model: ModelConfig, size: int) -> tuple[int, bool]:
        """(tokens, exact) for admission, which must not wait for a tokenizer to load (~0.3 s, once):
        meanwhile the body's bytes bound its tokens from above (a BPE token is at least one
        byte), so the reservation stays an upper bound."""
        if not tokens_loaded(model.upstream):
            self.preload(lambda: encoding_for(model.upstream))
            return size, False
        return await self.count_prompt(fmt, body, model, size), True

    def preload(self, load: Callable[[], object]) -> None:
        """Run `load` (a tokenizer) in a thread, once at a time."""
        if self._preloading is None or self._preloading.done():
            self._preloading = asyncio.get_running_loop().run_in_executor(None, load)

    async def _admit(self, request_id, customer, key_id, plan, model, endpoint, period, now, capped, prompt,
                     max_out, tokens, why: Worst) -> Admitted:
        if not capped:  # pay-as-you-go without a cap: nothing to reserve (saves two store calls)
            if self.inline:
                limits = _limits(customer, key_id)
                rate, local = (_granted(self.shared[1].take(customer.id, limits, tokens)) if limits else None), False
            else:
                rate, local = await self._use(
                    lambda _budget, limiter: self._rate(limiter, customer, key_id, tokens))
            return Admitted(customer.id, key_id, period, ("customer",), None, prompt, rate, local=local,
                            capped=False, rate_tokens=tokens if rate is not None else 0)
        if self.capping:
            await self._merged(customer)
        scopes = self.scopes(customer, key_id)
        worst = _units(_amount(model, plan, prompt, max_out, now))  # past the store's range: never fits
        why.units = worst
        if self.inline:
            decision = self.budget.reserve_now(customer.id, period, request_id, worst, scopes)
            if decision is not None:  # else the period is to be seeded first: the path below
                limits = _limits(customer, key_id)
                try:
                    rate = _granted(self.shared[1].take(customer.id, limits, tokens)) if limits else None
                except RateLimited:
                    if decision.hold is not None:
                        self.budget.release_now(decision.hold)
                    raise
                admitted = await self._decide(request_id, customer, key_id, plan, model, endpoint, prompt, period,
                                              scopes, rate, decision, False, now, why)
                admitted.rate_tokens = tokens if rate is not None else 0
                return admitted

        async def reserve(budget: Reservations, limiter: RateLimiter):
            # The rate limit and the reservation at once (one round trip on Redis); a call the
            # rate limit refuses gives back the hold it got meanwhile.
            rate, decision = await together(
                self.remote and budget is self.budget, self._rate(limiter, customer, key_id, tokens),
                budget.reserve(customer=customer.id, period=period, hold_id=request_id, units=worst,
                               scopes=scopes))
            if isinstance(rate, Exception):
                if isinstance(decision, Decision) and decision.hold is not None:
                    try:
                        await budget.release(decision.hold)
                    except store_down():
                        budget.forget(decision.hold)  # not renewed any more: it expires on its own
                raise rate
            if isinstance(decision, Recovering):
                raise ServiceUnavailable("Spend counters are being rebuilt after an outage; the request was not "
                                         "forwarded. Retry shortly.",
                                         headers={"Retry-After": _seconds(decision.wait)}) from None
            if isinstance(decision, Exception):
                raise decision
            return rate, decision

        (rate, decision), local = await self._use(reserve)
        admitted = await self._decide(request_id, customer, key_id, plan, model, endpoint, prompt, period,
                                      scopes, rate, decision, local, now, why)
        admitted.rate_tokens = tokens if rate is not None else 0
        return admitted

    async def _decide(self, request_id, customer, key_id, plan, model, endpoint, prompt, period, scopes, rate,
                      decision: Decision, local: bool, now: datetime, why: Worst) -> Admitted:
        """What to do with the reservation's answer: go, clamp, serve past the cap, or refuse."""
        if decision.allowed:  # the hold names the scopes
            return Admitted(customer.id, key_id, period, decision.hold.scopes, decision.hold, prompt, rate,
                            local=local)
        names = tuple(s.name for s in scopes)
        cap = customer.cap
        if cap is not None and cap.clamp and model.mode != "embedding":
            clamped = await self._clamp(request_id, customer, plan, model, prompt, period, scopes, decision, now,
                                        local, why.answers)
            if clamped is not None:
                hold, max_tokens = clamped
                return Admitted(customer.id, key_id, period, names, hold, prompt, rate,
                                clamped_max_tokens=max_tokens, local=local)
        action = cap.action if cap is not None else "block"
        if action == "notify":
            return Admitted(customer.id, key_id, period, names, None, prompt, rate, cap_reached=True,
                            local=local)
        if action == "throttle":
            throttle = Limit(name=f"throttle:{customer.id}", rpm=cap.throttle_rpm, tpm=None)
            slow, _ = await self._use(
                lambda _budget, limiter: limiter.acquire(customer=customer.id, limits=[throttle], tokens=0),
                local=local)
            if slow.allowed:
                return Admitted(customer.id, key_id, period, names, None, prompt, rate, cap_reached=True,
                                local=local)
            raise RateLimited(
                f"Spend cap reached: requests are throttled to {cap.throttle_rpm} per minute.",
                headers={"Retry-After": _seconds(slow.retry_after)})
        raise SpendCapReached(_cap_message(decision, why), headers={"x-should-retry": "false"})

    async def settle(self, admitted: Admitted, amount: Decimal, event_id: str, customer: CustomerConfig,
                     tokens: int = 0) -> None:
        """Count the call's actual amount against its caps (once), then tell the webhooks.

        The TPM limits were charged the worst case up front; they get the difference back.
        """
        capped, scopes, live = admitted.capped, admitted.scopes, customer
        if not capped and self._counts_late(customer):  # a cap set while the call ran counts it
            capped, live = True, self.customers.get(customer.id, customer)
            scopes = tuple(s.name for s in self.scopes(live, admitted.key_id))
        if not capped and admitted.credit_hold is None and not admitted.rate_tokens:
            return  # no cap, no credits, no TPM limit: nothing to count against
        units = max(-MAX_UNITS, min(to_units(amount), MAX_UNITS))
        tokens = min(tokens, RATE_MAX_TOKENS)
        limit = self.cap_amount(live)
        notify = self.notifier is not None and limit is not None and capped
        if self.inline and not notify and admitted.credit_hold is None and (
                not capped or admitted.capped and admitted.hold is not None):  # the common call, in one step
            if admitted.rate_tokens and tokens != admitted.rate_tokens:
                self.shared[1].correct(customer.id, _limits(customer, admitted.key_id), tokens - admitted.rate_tokens)
            if capped:
                self.budget.settle_now(admitted.hold, units)
            return

        async def settle(budget: Reservations, limiter: RateLimiter):
            writes = []  # independent of each other: at once, so one round trip on Redis
            if admitted.rate_tokens and tokens != admitted.rate_tokens:
                writes.append(limiter.adjust(customer=customer.id, limits=_limits(customer, admitted.key_id),
                                             delta_tokens=tokens - admitted.rate_tokens))
            if admitted.credit_hold is not None:
                writes.append(budget.settle(admitted.credit_hold, units))
            if admitted.capped and admitted.hold is not None:
                writes.append(budget.settle(admitted.hold, units))
            elif capped:  # served past the cap, or admitted before the cap: by id, at most once
                writes.append(budget.add_spent(customer=admitted.customer, period=admitted.period,
                                               scopes=scopes, units=units, event_id=event_id))
            for result in await together(self.remote and budget is self.budget, *writes):
                if isinstance(result, Exception):
                    raise result
            if notify:  # one more round trip, only when someone listens
                return await budget.usage(customer=admitted.customer, period=admitted.period, scope="customer")
            return None

        try:
            usage, _ = await self._use(settle, local=admitted.local)
        except ServiceUnavailable:
            return  # the event is in the journal and the ledger; the resync counts it
        if notify:
            await self.notifier.threshold_crossed(customer=customer.id, period=admitted.period,
                                                  spent=Decimal(usage[0]) / NANO, limit=limit)
        if admitted.credit_hold is not None and self.notifier is not None:
            await self._maybe_top_up(customer, admitted.local)

    async def _maybe_top_up(self, customer: CustomerConfig, local: bool) -> None:
        """Ask for a top-up once per crossing below the plan's threshold (a new grant re-arms it)."""
        plan = self.plans.get(customer.plan) if self.plans else None
        credits = plan.credits if plan is not None else None
        if credits is None or credits.top_up_below is None:
            return
        state = await self.credits.state(customer.id)
        spent, _held = (await self._use(lambda budget, _l: budget.usage(
            customer=customer.id, period=CREDITS, scope="credits"), local=local))[0]
        left = Decimal(state.limit_units - spent) / NANO
        if left >= credits.top_up_below:
            return
        amount = (credits.top_up_to - left) if credits.top_up_to is not None else None
        await self.notifier.send(
            event_type="credits.top_up_requested", dedupe_key=f"{{{customer.id}}}:top_up:{state.limit_units}",
            data={"customer": customer.id, "balance": money_str(max(left, Decimal(0))),
                  "below": money_str(credits.top_up_below),
                  "to": None if credits.top_up_to is None else money_str(credits.top_up_to),
                  "amount": None if amount is None else money_str(amount)})

    async def release(self, admitted: Admitted) -> None:
        for hold in (admitted.hold, admitted.credit_hold):
            if hold is None:
                continue
            if self.inline:
                self.budget.release_now(hold)
                continue
            try:
                await self._use(lambda budget, _limiter, hold=hold: budget.release(hold), local=admitted.local)
            except ServiceUnavailable:
                self.shared[0].forget(hold)  # not renewed any more: it expires on its own

    async def _rate(self, limiter: RateLimiter, customer: CustomerConfig, key_id: str | None,
                    tokens: int) -> RateDecision | None:
        limits = _limits(customer, key_id)
        if not limits:
            return None
        return _granted(await limiter.acquire(customer=customer.id, limits=limits, tokens=tokens))

    async def _clamp(self, request_id, customer, plan, model, prompt, period, scopes, decision: Decision, now,
                     local: bool, answers: int):
        """Reserve with the largest max_tokens the remaining budget pays for, if any: for every
        answer together, a whole number of tokens each."""
        if decision.limit is None:
            return None
        room = decision.limit - decision.spent - decision.held
        per_token = to_units(_amount(model, plan, 0, 1, now)) or 1
        input_units = to_units(_amount(model, plan, prompt, 0, now))
        max_tokens = (room - input_units) // per_token // answers * answers
        if max_tokens < 1:
            return None
        worst = to_units(_amount(model, plan, prompt, max_tokens, now))
        retry, _ = await self._use(
            lambda budget, _limiter: budget.reserve(customer=customer.id, period=period, hold_id=request_id,
                                                    units=worst, scopes=scopes),
            local=local)
        return (retry.hold, max_tokens) if retry.allowed else None


BIG_PROMPT = 64 * 1024  # bytes of body from which tokenizing moves off the event loop


async def together(remote: bool, *calls: Awaitable) -> list:
    """Each call's result, or the Exception it raised, in order.

    With a remote store (Redis) the calls run at once, so their scripts go out in one round trip
    (`metering.limits.redis_batch`): the first in this task, the others as tasks started before
    it (no `asyncio.gather`: its outer future and callbacks cost more than the tasks, ~4 % of a
    capped call on Redis). In-process stores never wait, and tasks would only cost.
    """
    if not remote or len(calls) < 2:
        results = []
        for call in calls:
            try:
                results.append(await call)
            except Exception as exc:
                results.append(exc)
        return results
    loop = asyncio.get_running_loop()
    others = [loop.create_task(_outcome(call)) for call in calls[1:]]
    try:
        try:
            results = [await calls[0]]
        except Exception as exc:
            results = [exc]
        for task in others:
            results.append(await task)
    except BaseException:  # cancelled: so are the calls still running, as gather would do
        for task in others:
            task.cancel()
        raise
    return results


async def _outcome(call: Awaitable):
    """The call's result, or the Exception it raised (a BaseException, e.g. a cancel, passes)."""
    try:
        return await call
    except Exception as exc:
        return exc


_LIMITS: dict[tuple[int, str | None], tuple[CustomerConfig, list[Limit]]] = {}
_SCOPES: dict[tuple[int, str | None], tuple[CustomerConfig, Decimal | None, tuple[Scope, ...]]] = {}


def _limits(customer: CustomerConfig, key_id: str | None) -> list[Limit]:
    """The RPM/TPM limits a call counts against: its customer's, and its key's (the key's own
    limit when it has one, else the customer's applies to each key too). Built once per
    customer config (a reloaded or edited customer is a new object), as each call needs them."""
    cached = _LIMITS.get((id(customer), key_id))
    if cached is not None and cached[0] is customer:
        return cached[1]
    limits = _build_limits(customer, key_id)
    if len(_LIMITS) >= 65536:
        _LIMITS.clear()
    _LIMITS[(id(customer), key_id)] = (customer, limits)
    return limits


def _build_limits(customer: CustomerConfig, key_id: str | None) -> list[Limit]:
    limits = []
    limit = customer.rate_limit
    if limit is not None and (limit.rpm is not None or limit.tpm is not None):
        limits.append(Limit(name=f"customer:{customer.id}", rpm=limit.rpm, tpm=limit.tpm))
    if key_id is not None:
        policy = customer.key_policies.get(key_id)
        own = policy.rate_limit if policy is not None and policy.rate_limit is not None else limit
        if own is not None and (own.rpm is not None or own.tpm is not None):
            limits.append(Limit(name=f"key:{key_id}", rpm=own.rpm, tpm=own.tpm))
    return limits


def _granted(decision: RateDecision) -> RateDecision:
    """The rate limits' answer, if it lets the call go; else the 429 that explains it."""
    if not decision.allowed:
        raise RateLimited("Rate limit reached for requests" if decision.remaining_requests == 0
                          else "Rate limit reached for tokens",
                          headers={"Retry-After": _seconds(decision.retry_after), **rate_headers(decision)})
    return decision


def rate_headers(decision: RateDecision | None) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers for the tightest limit."""
    if decision is None:
        return {}
    headers = {}
    if decision.limit_requests is not None:
        headers["x-ratelimit-limit-requests"] = str(decision.limit_requests)
        headers["x-ratelimit-remaining-requests"] = str(max(decision.remaining_requests or 0, 0))
        headers["x-ratelimit-reset-requests"] = f"{decision.reset_requests:.3f}s"
    if decision.limit_tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(decision.limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(max(decision.remaining_tokens or 0, 0))
        headers["x-ratelimit-reset-tokens"] = f"{decision.reset_tokens:.3f}s"
    return headers


def _model_max_output(model: ModelConfig) -> int:
    """The worst case of a call that set no output cap: the model's max output."""
    if model.mode == "embedding":
        return 0
    return min(model.max_output_tokens or DEFAULT_MAX_OUTPUT, MAX_OUTPUT_TOKENS)


def _amount(model: ModelConfig, plan: PlanConfig, input_tokens: int, output_tokens: int, now: datetime) -> Decimal:
    """The most this many tokens can cost under `plan`, wherever in the period they fall."""
    return max_tokens_amount(plan, model, Usage(input_tokens=input_tokens, output_tokens=output_tokens), now)


def _units(amount: Decimal) -> int:
    """`amount` in nano-USD, at most what the stores hold (a cap of that size is never reached)."""
    return min(to_units(amount), MAX_UNITS)


def _seconds(value: float) -> str:
    return str(max(1, int(value + 0.999)))


def _cap_message(decision: Decision, why: Worst) -> str:
    """Why a call was refused: the cap is used up, or this call's worst case does not fit what is left."""
    limit = Decimal(decision.limit or 0) / NANO
    scope = "this key's" if (decision.scope or "").startswith("key:") else "your"
    room = max(Decimal(decision.limit or 0) - decision.spent - decision.held, 0) / NANO
    if decision.spent >= (decision.limit or 0):
        return (f"You have reached {scope} spend cap of ${decimal_str(limit)} for this billing period. "
                "Raise the cap or upgrade the plan to continue.")
    answers = f" for {why.answers} answers" if why.answers > 1 else ""
    source = (f"`{why.output_from}` of {why.output}" if why.output_from
              else f"the model's maximum output of {why.output // why.answers} tokens{answers}, as the request set "
                   "no output limit")
    held = f" (${decimal_str(Decimal(decision.held) / NANO)} of it held by calls in flight)" if decision.held else ""
    return (f"This request's worst case, ${decimal_str(Decimal(why.units) / NANO)} ({why.prompt} prompt tokens and "
            f"{source}), does not fit the ${decimal_str(room)} left of {scope} spend cap of "
            f"${decimal_str(limit)}{held}. Lower the output limit, or set `clamp: true` on the cap to have it "
            "lowered for you.")