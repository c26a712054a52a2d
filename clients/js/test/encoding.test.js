// The Node client without a network: what it sends, how it reads errors, when it retries.
// A stub `fetch` stands in for the proxy and records every attempt.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  errorFrom, exactNumber, InvalidRequestError, NotFoundError, Payware, PaywareError, RateLimitError, ServerError,
  SpendCapReachedError,
} from "../payware.js";

/** A fetch that answers from `answers` in turn (the last one repeats) and records each request. */
function stubFetch(answers) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, ...init, at: performance.now() });
    const next = answers[Math.min(calls.length - 1, answers.length - 1)];
    if (next instanceof Error) throw next;
    const { status = 200, headers = {}, body = "{}" } = next;
    return new Response(body, { status, headers });
  };
  return { fetch, calls };
}

const client = (answers, options = {}) => {
  const stub = stubFetch(answers);
  return { pw: new Payware("pk_test", { baseURL: "http://payware.test", fetch: stub.fetch, ...options }), ...stub };
};

test("exact numbers: integers and decimal strings pass, fractions of a double are refused", () => {
  assert.equal(exactNumber(8420, "quantity"), 8420);
  assert.equal(exactNumber(12345678901234567890n, "quantity"), "12345678901234567890");
  assert.equal(exactNumber("0.00003", "unitPrice"), "0.00003");
  for (const bad of [0.1, Number.NaN, 2 ** 60, true, null, {}]) {
    assert.throws(() => exactNumber(bad, "quantity"), TypeError);
  }
});

test("a record is sent in the API's field names with a generated idempotency key", async () => {
  const { pw, calls } = client([{ body: JSON.stringify({ id: "rec_1", duplicate: false }) }]);
  await pw.usage.record({ customer: "cust_abc123", metric: "llm_tokens", quantity: 8420, unitPrice: "0.00003",
    meta: { model: "gpt-5" }, session: "sess_xyz", feature: "code-review" });
  const [call] = calls;
  assert.equal(call.url, "http://payware.test/v1/usage/records");
  assert.equal(call.method, "POST");
  assert.equal(call.headers.Authorization, "Bearer pk_test");
  const body = JSON.parse(call.body);
  assert.match(body.idempotency_key, /^pwc_[0-9a-f]{32}$/);
  delete body.idempotency_key;
  assert.deepEqual(body, { customer: "cust_abc123", metric: "llm_tokens", quantity: 8420, unit_price: "0.00003",
    meta: { model: "gpt-5" }, session: "sess_xyz", feature: "code-review" });
});

test("an unknown record field or filter is refused before sending", async () => {
  const { pw, calls } = client([{}]);
  await assert.rejects(pw.usage.record({ metric: "agent_actions", quantity: 1, colour: "red" }), /unknown field "colour"/);
  await assert.rejects(pw.usage.recordBatch([{ metric: "agent_actions", quantity: 1, colour: "red" }]),
    /records\[0\]: unknown field "colour"/);
  await assert.rejects(pw.usage.events("c", { sesion: "x" }), /unknown filter "sesion"/);
  assert.equal(calls.length, 0);
});

test("the summary gains `total`, the tokens' total", async () => {
  const { pw, calls } = client([{ body: JSON.stringify({ customer: "c", tokens: { total: 142500 }, amount_due: "4.28" }) }]);
  const summary = await pw.usage.summary("c");
  assert.equal(summary.total, 142500);
  assert.equal(summary.amount_due, "4.28");
  assert.equal(calls[0].url, "http://payware.test/v1/usage/summary?customer=c");
});

test("events are read from JSON lines, with the filters in the query", async () => {
  const { pw, calls } = client([{ body: '{"id":"a","amount":"0.1"}\n{"id":"b","amount":"0.2"}\n' }]);
  const events = await pw.usage.events("c", { session: "s 1", from: new Date("2026-01-01T00:00:00Z") });
  assert.deepEqual(events.map((e) => e.id), ["a", "b"]);
  const url = new URL(calls[0].url);
  assert.deepEqual(Object.fromEntries(url.searchParams),
    { customer: "c", session: "s 1", from: "2026-01-01T00:00:00.000Z", format: "jsonl" });
});

test("every status maps to its error class, with the envelope's fields and the request id", () => {
  const envelope = (code) => JSON.stringify({ error: { message: "m", type: "t", param: "p", code } });
  const headers = new Headers({ "X-Payware-Request-Id": "req_1" });
  for (const [status, body, Kind] of [[400, envelope(null), InvalidRequestError], [404, envelope("not_found"), NotFoundError],
    [429, envelope("rate_limit_exceeded"), RateLimitError], [429, envelope("spend_cap_reached"), SpendCapReachedError],
    [502, "<html>bad gateway</html>", ServerError], [409, "{}", PaywareError]]) {
    const error = errorFrom(status, headers, body);
    assert.equal(error.constructor, Kind, `${status} ${body}`);
    assert.equal(error.status, status);
    assert.equal(error.requestId, "req_1");
    assert.ok(error.message);
  }
});

test("a retry resends the same bytes; a 4xx is final; Retry-After as an HTTP date is honoured", async () => {
  const soon = new Date(Date.now() + 1500).toUTCString(); // whole seconds: waits 0.5 to 1.5 s
  const { pw, calls } = client([{ status: 503, headers: { "Retry-After": soon } }, { body: '{"duplicate":true}' }]);
  await pw.usage.record({ customer: "c", metric: "agent_actions", quantity: 1 });
  assert.equal(calls.length, 2);
  assert.equal(calls[0].body, calls[1].body);
  assert.ok(calls[1].at - calls[0].at >= 300);

  const final = client([{ status: 400, body: JSON.stringify({ error: { message: "bad", param: "metric" } }) }]);
  await assert.rejects(final.pw.usage.summary("c"), InvalidRequestError);
  assert.equal(final.calls.length, 1);

  const capped = client([{ status: 429, body: JSON.stringify({ error: { message: "cap", code: "spend_cap_reached" } }) }]);
  await assert.rejects(capped.pw.usage.summary("c"), SpendCapReachedError);
  assert.equal(capped.calls.length, 1);
});

test("the key and URL come from the environment when not given; a /v1 suffix is dropped", () => {
  const saved = { key: process.env.PAYWARE_API_KEY, url: process.env.PAYWARE_BASE_URL };
  try {
    delete process.env.PAYWARE_API_KEY;
    assert.throws(() => new Payware(), /PAYWARE_API_KEY/);
    process.env.PAYWARE_API_KEY = "pk_env";
    process.env.PAYWARE_BASE_URL = "http://proxy.example:8080/v1/";
    assert.equal(new Payware().baseURL, "http://proxy.example:8080");
  } finally {
    for (const [name, value] of [["PAYWARE_API_KEY", saved.key], ["PAYWARE_BASE_URL", saved.url]]) {
      if (value === undefined) delete process.env[name]; else process.env[name] = value;
    }
  }
});
