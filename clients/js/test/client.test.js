// The Node client against a real proxy. tests/clients/test_node_client.py starts the proxy and
// passes it here: PAYWARE_TEST_URL, PAYWARE_TEST_ADMIN_KEY, PAYWARE_TEST_CUSTOMER (a customer on a
// plan pricing `agent_actions` at $0.002), PAYWARE_TEST_CUSTOMER_KEY (that customer's key) and
// PAYWARE_TEST_OTHER_CUSTOMER. Retries are driven by a relay in front of the proxy that drops,
// delays or answers in its place.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import {
  APIConnectionError, APITimeoutError, AuthenticationError, InvalidRequestError, NotFoundError, Payware,
  PaywareError, PermissionDeniedError, ServerError, SpendCapReachedError,
} from "../payware.js";

const URL_ = process.env.PAYWARE_TEST_URL;
const ADMIN_KEY = process.env.PAYWARE_TEST_ADMIN_KEY;
const CUSTOMER = process.env.PAYWARE_TEST_CUSTOMER;
const CUSTOMER_KEY = process.env.PAYWARE_TEST_CUSTOMER_KEY;
const OTHER = process.env.PAYWARE_TEST_OTHER_CUSTOMER;
const skip = URL_ && ADMIN_KEY && CUSTOMER && CUSTOMER_KEY && OTHER
  ? false : "no proxy: run through tests/clients/test_node_client.py (it sets PAYWARE_TEST_URL and the keys)";

const it = (name, fn) => test(name, { skip }, fn);
const admin = (url = URL_, options = {}) => new Payware(ADMIN_KEY, { baseURL: url, ...options });
const sessionId = () => "sess_" + randomUUID().slice(0, 12);

const DROP_AFTER_FORWARD = "drop-after-forward"; // the proxy gets the request; the client gets no answer
const DROP = "drop"; // the connection is closed unread
const HANG = "hang"; // the answer comes after the client has given up

/** A relay in front of the proxy: its first requests follow `script`, later ones are forwarded. */
async function relay(script) {
  const seen = [];
  const steps = [...script];
  const server = createServer(async (req, res) => {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks).toString();
    seen.push({ method: req.method, url: req.url, body, at: performance.now() });
    const step = steps.shift();
    if (step === DROP) return req.socket.destroy();
    if (step === HANG) { setTimeout(() => req.socket.destroy(), 1500); return; }
    if (step && typeof step === "object") {
      res.writeHead(step.status, { "Content-Type": "application/json", ...step.headers });
      return res.end(step.body ?? "");
    }
    const headers = { ...req.headers };
    delete headers.host; delete headers.connection; delete headers["content-length"];
    const answer = await fetch(URL_ + req.url, { method: req.method, headers, body: body || undefined });
    const text = await answer.text();
    if (step === DROP_AFTER_FORWARD) return req.socket.destroy();
    res.writeHead(answer.status, { "Content-Type": answer.headers.get("content-type") ?? "application/json" });
    res.end(text);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    seen,
    posts: () => seen.filter((s) => s.method === "POST"),
    close: () => { server.closeAllConnections(); return new Promise((resolve) => server.close(resolve)); },
  };
}

async function withRelay(script, fn) {
  const hop = await relay(script);
  try { return await fn(hop); } finally { await hop.close(); }
}

async function chat(key) {
  const answer = await fetch(URL_ + "/v1/chat/completions", {
    method: "POST", headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model: "fake-ok", messages: [{ role: "user", content: "hi" }] }),
  });
  assert.equal(answer.status, 200, await answer.text());
}

const envelope = (code, type = "invalid_request_error") =>
  JSON.stringify({ error: { message: code, type, param: null, code } });

/** Sum decimal strings exactly, at 18 places, as bigints. */
function decimalSum(values) {
  const scale = 18;
  const units = (v) => {
    const [whole, frac = ""] = String(v).split(".");
    const sign = whole.startsWith("-") ? -1n : 1n;
    return sign * (BigInt(whole.replace("-", "") || "0") * 10n ** BigInt(scale) + BigInt((frac + "0".repeat(scale)).slice(0, scale)));
  };
  return values.reduce((total, v) => total + units(v), 0n);
}

it("a record is priced by the plan and its metadata reaches the ledger", async () => {
  const pw = admin();
  const session = sessionId();
  const result = await pw.usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: 7,
    meta: { run: "r-1" }, session, feature: "code-review" });
  assert.equal(result.object, "usage.record");
  assert.equal(result.duplicate, false);
  assert.equal(result.quantity, "7");
  assert.equal(decimalSum([result.amount]), decimalSum(["0.014"])); // 7 x 0.002, no markup
  const [event, ...rest] = await pw.usage.events(CUSTOMER, { session });
  assert.equal(rest.length, 0);
  assert.equal(event.id, result.id);
  assert.equal(event.feature, "code-review");
  assert.equal(event.meta.run, "r-1");
  assert.match(event.meta.idempotency_key, /^pwc_[0-9a-f]{32}$/);
});

it("quantities and prices travel as exact decimals", async () => {
  const pw = admin();
  for (const [quantity, unitPrice, amount] of [["2.5", "0.04", "0.10"], [1000n, "0.000001", "0.001"],
    ["0.000000001", "1000", "0.000001"]]) {
    const result = await pw.usage.record({ customer: CUSTOMER, metric: "compute_minutes", quantity, unitPrice,
      session: sessionId() });
    assert.equal(decimalSum([result.amount]), decimalSum([amount]), `${quantity} x ${unitPrice}`);
  }
});

it("a non-integer number is refused before anything is sent", async () => {
  await withRelay([], async (hop) => {
    await assert.rejects(admin(hop.url).usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: 0.1 }),
      { name: "TypeError", message: /quantity/ });
    await assert.rejects(admin(hop.url).usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: 1,
      unitPrice: 0.1 }), { name: "TypeError", message: /unitPrice/ });
    assert.equal(hop.seen.length, 0);
  });
});

it("a replay with the same key records one event", async () => {
  const pw = admin();
  const session = sessionId();
  const record = { customer: CUSTOMER, metric: "agent_actions", quantity: 3, session, idempotencyKey: `${session}/1` };
  const first = await pw.usage.record(record);
  const again = await pw.usage.record(record);
  assert.deepEqual([first.duplicate, again.duplicate], [false, true]);
  assert.equal(first.id, again.id);
  assert.equal((await pw.usage.events(CUSTOMER, { session })).length, 1);
});

it("a call without a key gets a fresh one, so two calls are two events", async () => {
  const pw = admin();
  const session = sessionId();
  const a = await pw.usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: 1, session });
  const b = await pw.usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: 1, session });
  assert.notEqual(a.id, b.id);
  assert.equal((await pw.usage.events(CUSTOMER, { session })).length, 2);
});

it("a dropped answer is retried with the same generated key and recorded once", async () => {
  const session = sessionId();
  await withRelay([DROP_AFTER_FORWARD], async (hop) => {
    const result = await admin(hop.url).usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: 5, session });
    const [first, second, ...more] = hop.posts();
    assert.equal(more.length, 0);
    assert.equal(first.body, second.body); // the retry is the same call, byte for byte
    assert.match(JSON.parse(first.body).idempotency_key, /^pwc_/);
    assert.equal(result.duplicate, true); // the proxy kept the first attempt; the retry found it
    const events = await admin().usage.events(CUSTOMER, { session });
    assert.deepEqual(events.map((e) => e.id), [result.id]);
  });
});

it("a dropped batch answer is retried with the same keys for every record", async () => {
  const session = sessionId();
  await withRelay([DROP_AFTER_FORWARD], async (hop) => {
    const results = await admin(hop.url).usage.recordBatch(
      [1, 2, 3].map((quantity) => ({ metric: "agent_actions", quantity, session })), { customer: CUSTOMER });
    assert.deepEqual(results.map((r) => r.duplicate), [true, true, true]);
    const [first, second] = hop.posts();
    const keys = JSON.parse(first.body).records.map((r) => r.idempotency_key);
    assert.equal(new Set(keys).size, 3);
    assert.deepEqual(JSON.parse(second.body).records.map((r) => r.idempotency_key), keys);
    assert.equal((await admin().usage.events(CUSTOMER, { session })).length, 3);
  });
});

it("a 429 is retried after its Retry-After", async () => {
  await withRelay([{ status: 429, headers: { "Retry-After": "0.4" }, body: envelope("rate_limit_exceeded", "requests") }],
    async (hop) => {
      const result = await admin(hop.url).usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: 1,
        session: sessionId() });
      const [first, second] = hop.posts();
      assert.ok(second.at - first.at >= 390, `waited ${second.at - first.at} ms`);
      assert.equal(result.duplicate, false);
    });
});

it("a 5xx is retried until maxRetries, then raised as a ServerError", async () => {
  const fail = { status: 503, headers: { "Retry-After": "0" }, body: envelope("service_unavailable", "server_error") };
  await withRelay([fail, fail, fail], async (hop) => {
    const pw = admin(hop.url, { maxRetries: 2 });
    await assert.rejects(pw.usage.summary(CUSTOMER), (error) => {
      assert.ok(error instanceof ServerError);
      assert.equal(error.status, 503);
      assert.equal(error.code, "service_unavailable");
      return true;
    });
    assert.equal(hop.seen.length, 3);
    assert.equal((await pw.usage.summary(CUSTOMER)).customer, CUSTOMER); // script spent: forwarded
  });
});

it("a client error is never retried", async () => {
  await withRelay([], async (hop) => {
    await assert.rejects(admin(hop.url).usage.record({ customer: CUSTOMER, metric: "teleports", quantity: 1 }),
      (error) => error instanceof InvalidRequestError && error.param === "metric" && error.code === "unknown_metric");
    assert.equal(hop.posts().length, 1);
  });
});

it("a reached spend cap is typed and never retried", async () => {
  await withRelay([{ status: 429, headers: { "x-should-retry": "false" },
    body: envelope("spend_cap_reached", "insufficient_quota") }], async (hop) => {
    await assert.rejects(admin(hop.url).usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: 1 }),
      (error) => error instanceof SpendCapReachedError && error.status === 429 && error.type === "insufficient_quota");
    assert.equal(hop.posts().length, 1);
  });
});

it("no answer at all is a connection error after the retries", async () => {
  const closed = await relay([]);
  await closed.close(); // its port is now closed
  await assert.rejects(admin(closed.url, { maxRetries: 1 }).usage.summary(CUSTOMER), APIConnectionError);
  await withRelay([DROP, DROP], async (hop) => {
    await assert.rejects(admin(hop.url, { maxRetries: 1 }).usage.summary(CUSTOMER), APIConnectionError);
    assert.equal(hop.seen.length, 2);
  });
});

it("a slow answer is a timeout, and the retry gets through", async () => {
  await withRelay([HANG], async (hop) => {
    assert.equal((await admin(hop.url, { timeout: 300 }).usage.summary(CUSTOMER)).customer, CUSTOMER);
    assert.equal(hop.seen.length, 2);
  });
  await withRelay([HANG], async (hop) => {
    await assert.rejects(admin(hop.url, { timeout: 300, maxRetries: 0 }).usage.summary(CUSTOMER), APITimeoutError);
  });
});

it("the summary equals the ledger events", async () => {
  const pw = admin();
  await chat(CUSTOMER_KEY);
  await pw.usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: 9 });
  await pw.usage.record({ customer: CUSTOMER, metric: "compute_minutes", quantity: "1.5", unitPrice: "0.04" });
  const summary = await pw.usage.summary(CUSTOMER);
  const events = await pw.usage.events(CUSTOMER);
  assert.equal(summary.customer, CUSTOMER);
  assert.equal(summary.requests, events.length);
  const tokens = events.reduce((n, e) => n + (e.input_tokens ?? 0) + (e.output_tokens ?? 0), 0);
  assert.ok(tokens > 0);
  assert.equal(summary.total, summary.tokens.total);
  assert.equal(summary.total, tokens);
  assert.equal(decimalSum([summary.amount_due_exact]), decimalSum(events.map((e) => e.amount)));
  const actions = summary.by_model.find((m) => m.model === "metric:agent_actions");
  assert.equal(decimalSum([actions.quantity]),
    decimalSum(events.filter((e) => e.metric === "agent_actions").map((e) => e.quantity)));
});

it("a batch is all or nothing", async () => {
  const pw = admin();
  const session = sessionId();
  const good = [{ metric: "agent_actions", quantity: 1, session },
    { metric: "compute_minutes", quantity: "2", unitPrice: "0.04", session }];
  await assert.rejects(pw.usage.recordBatch([...good, { metric: "agent_actions", quantity: "many", session }],
    { customer: CUSTOMER }), (error) => error instanceof InvalidRequestError && error.param === "records[2].quantity");
  assert.deepEqual(await pw.usage.events(CUSTOMER, { session }), []);
  const results = await pw.usage.recordBatch(good, { customer: CUSTOMER });
  assert.deepEqual(results.map((r) => r.metric), ["agent_actions", "compute_minutes"]);
  assert.equal((await pw.usage.events(CUSTOMER, { session })).length, 2);
});

it("errors are typed with the envelope fields", async () => {
  const cases = [
    ["pw-wrong-key", (pw) => pw.usage.summary(CUSTOMER), AuthenticationError, 401, "invalid_api_key", null],
    [ADMIN_KEY, (pw) => pw.usage.record({ customer: CUSTOMER, metric: "Agent Actions", quantity: 1 }),
      InvalidRequestError, 400, null, "metric"],
    [ADMIN_KEY, (pw) => pw.usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: -1 }),
      InvalidRequestError, 400, null, "quantity"],
    [CUSTOMER_KEY, (pw) => pw.usage.summary(OTHER), PermissionDeniedError, 403, "forbidden", null],
    [ADMIN_KEY, (pw) => pw.billing.setCap(CUSTOMER, "abc"), InvalidRequestError, 400, null, "amount"],
  ];
  for (const [key, call, Kind, status, code, param] of cases) {
    await assert.rejects(call(new Payware(key, { baseURL: URL_ })), (error) => {
      assert.equal(error.constructor, Kind);
      assert.ok(error instanceof PaywareError);
      assert.deepEqual([error.status, error.code, error.param], [status, code, param]);
      assert.ok(error.message);
      return true;
    });
  }
});

it("an unknown customer is a typed error naming the customer", async () => {
  const pw = admin();
  for (const call of [() => pw.usage.record({ customer: "cust_nobody", metric: "agent_actions", quantity: 1 }),
    () => pw.usage.summary("cust_nobody")]) {
    await assert.rejects(call(), (error) => {
      assert.equal(error.code, "customer_not_found");
      assert.equal(error.param, "customer");
      assert.equal(error.constructor, { 400: InvalidRequestError, 404: NotFoundError }[error.status]);
      return true;
    });
  }
});

it("the customer's own cap is set and removed, and statements are listed", async () => {
  const pw = admin();
  assert.equal((await pw.billing.setCap(CUSTOMER, "5.00")).customer_cap, "5.00");
  assert.equal((await pw.billing.cap(CUSTOMER)).amount, "5.00");
  assert.equal((await pw.billing.setCap(CUSTOMER, null)).customer_cap, null);
  assert.deepEqual(await pw.billing.statements(CUSTOMER), []); // the open period is not a statement yet
});

it("events are filtered by time and exported as CSV", async () => {
  const pw = admin();
  const session = sessionId();
  await pw.usage.record({ customer: CUSTOMER, metric: "agent_actions", quantity: 2, session });
  const later = new Date(Date.now() + 60_000);
  assert.equal((await pw.usage.events(CUSTOMER, { session, to: later })).length, 1);
  assert.deepEqual(await pw.usage.events(CUSTOMER, { session, from: later }), []);
  const [header, row, ...rest] = (await pw.usage.exportCsv(CUSTOMER, { session })).trim().split(/\r?\n/);
  assert.equal(rest.length, 0);
  assert.match(header, /^id,ts,customer/);
  assert.ok(row.includes(session));
});

it("a customer key reads its own usage without naming itself", async () => {
  const summary = await new Payware(CUSTOMER_KEY, { baseURL: URL_ + "/v1" }).usage.summary();
  assert.equal(summary.customer, CUSTOMER);
  assert.equal(summary.total, summary.tokens.total);
});
