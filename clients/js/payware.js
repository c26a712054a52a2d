// Payware's client for Node (18+) and other runtimes with a global fetch: record custom usage,
// read a customer's summary, events, cap and statements. No dependencies.
//
//   import { Payware } from "payware-client";
//   const pw = new Payware("pk_...", { baseURL: "http://127.0.0.1:8080" });
//   await pw.usage.record({ customer: "cust_abc123", metric: "agent_actions", quantity: 3 });
//   (await pw.usage.summary("cust_abc123")).amount_due;

export const VERSION = "0.1.0";
const DEFAULT_BASE_URL = "http://127.0.0.1:8080";
const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_MAX_RETRIES = 2;
const MAX_RETRY_AFTER_MS = 60_000; // a longer Retry-After is not waited for: the backoff applies instead

/**
 * @typedef {number | bigint | string} Quantity  An integer number, a bigint or a decimal string
 *   such as "0.25". Non-integer numbers are refused: 0.1 + 0.2 is not 0.3, and money is exact.
 *
 * @typedef {object} RecordInput
 * @property {string} [customer]  the customer billed (required with the admin key)
 * @property {string} metric  a lowercase metric name such as "agent_actions"
 * @property {Quantity} quantity
 * @property {Quantity} [unitPrice]  what the customer pays per unit; without it the plan prices the metric
 * @property {Record<string, unknown>} [meta]  free-form metadata (at most 4 KB of JSON)
 * @property {string} [session]
 * @property {string} [feature]
 * @property {string} [idempotencyKey]  generated per call when omitted, reused on each retry
 *
 * @typedef {object} RecordResult
 * @property {string} id
 * @property {"usage.record"} object
 * @property {string} metric
 * @property {string} quantity  a decimal string
 * @property {string} amount  a decimal string
 * @property {boolean} duplicate  true when this idempotency key was already recorded
 *
 * @typedef {object} EventFilters
 * @property {Date | string | number} [from]  a Date, an ISO 8601 string or a unix timestamp
 * @property {Date | string | number} [to]
 * @property {string} [session]
 * @property {string} [model]
 * @property {string} [feature]
 * @property {string} [period]
 *
 * @typedef {object} PaywareOptions
 * @property {string} [baseURL]  the proxy's URL (a trailing /v1 is ignored); default PAYWARE_BASE_URL or http://127.0.0.1:8080
 * @property {number} [timeout]  milliseconds per attempt (default 30000)
 * @property {number} [maxRetries]  retries after a connection error, a timeout, a 429 or a 5xx (default 2)
 * @property {typeof fetch} [fetch]  the fetch to use (default: the global one)
 */

/** Any failure of a Payware call; `status` is undefined when no answer arrived. */
export class PaywareError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, type?: string|null, code?: string|null, param?: string|null,
   *          requestId?: string|null, body?: unknown, cause?: unknown}} [fields]
   */
  constructor(message, fields = {}) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.name = new.target.name;
    /** @type {number | undefined} */ this.status = fields.status;
    /** @type {string | null} */ this.type = fields.type ?? null;
    /** @type {string | null} */ this.code = fields.code ?? null;
    /** @type {string | null} */ this.param = fields.param ?? null;
    /** @type {string | null} */ this.requestId = fields.requestId ?? null;
    /** @type {unknown} */ this.body = fields.body;
  }
}
/** 400 (or 413, 422): the request is wrong; `param` names the field. Never retried. */
export class InvalidRequestError extends PaywareError {}
/** 401: the key is missing or not a Payware key. Never retried. */
export class AuthenticationError extends PaywareError {}
/** 403: the key may not do this (e.g. a customer key naming another customer). Never retried. */
export class PermissionDeniedError extends PaywareError {}
/** 404: no such route or object. Never retried. */
export class NotFoundError extends PaywareError {}
/** 429 rate_limit_exceeded: retried after Retry-After until maxRetries is spent. */
export class RateLimitError extends PaywareError {}
/** 429 with code spend_cap_reached: the customer's cap is reached. Never retried. */
export class SpendCapReachedError extends PaywareError {}
/** 5xx: retried with backoff until maxRetries is spent. */
export class ServerError extends PaywareError {}
/** No answer: the connection failed or was dropped. Retried (a record resends its idempotency key). */
export class APIConnectionError extends PaywareError {}
/** No answer within `timeout` milliseconds. Retried like any connection error. */
export class APITimeoutError extends APIConnectionError {}

const BY_STATUS = {
  400: InvalidRequestError, 413: InvalidRequestError, 422: InvalidRequestError,
  401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
};

/**
 * The typed error for an HTTP error answer.
 * @param {number} status
 * @param {Headers} headers
 * @param {string} text  the answer's body
 * @returns {PaywareError}
 */
export function errorFrom(status, headers, text) {
  let parsed;
  try { parsed = JSON.parse(text); } catch { parsed = undefined; }
  const envelope = parsed && typeof parsed === "object" ? parsed.error : undefined;
  let message, type = null, code = null, param = null;
  if (envelope && typeof envelope === "object") {
    message = String(envelope.message || `HTTP ${status}`);
    ({ type = null, code = null, param = null } = envelope);
  } else { // not Payware's envelope (a load balancer's page, say): keep the start of the text
    message = text.slice(0, 500).trim() || `HTTP ${status}`;
  }
  let Kind;
  if (status === 429) Kind = code === "spend_cap_reached" ? SpendCapReachedError : RateLimitError;
  else if (status >= 500) Kind = ServerError;
  else Kind = BY_STATUS[status] ?? PaywareError;
  return new Kind(message, { status, type, code, param, requestId: headers.get("x-payware-request-id"), body: parsed });
}

/**
 * An exact quantity or price for the wire: a safe integer as is, a bigint or a string as text.
 * @param {Quantity} value
 * @param {string} name
 * @returns {number | string}
 */
export function exactNumber(value, name) {
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "string") return value;
  if (typeof value === "number" && Number.isSafeInteger(value)) return value;
  throw new TypeError(`${name} must be an integer, a bigint or a decimal string (got ${typeof value} ${String(value)}); ` +
    `write ${name}: "0.25"`);
}

const RECORD_FIELDS = {
  customer: "customer", metric: "metric", quantity: "quantity", unitPrice: "unit_price", unit_price: "unit_price",
  meta: "meta", session: "session", feature: "feature", idempotencyKey: "idempotency_key",
  idempotency_key: "idempotency_key",
};

// Web Crypto is global from Node 19 (and in Deno, Bun and browsers); Node 18 has it in node:crypto.
const randomUUID = globalThis.crypto?.randomUUID
  ? () => globalThis.crypto.randomUUID()
  : (await import("node:crypto")).randomUUID;

/** A fresh idempotency key for one logical record call (kept for all of its retries). */
export function newIdempotencyKey() {
  return "pwc_" + randomUUID().replaceAll("-", "");
}

/**
 * @param {RecordInput} input
 * @param {string} where  a prefix for error messages
 */
function recordBody(input, where = "") {
  const body = {};
  for (const [name, value] of Object.entries(input ?? {})) {
    const wire = RECORD_FIELDS[name];
    if (wire === undefined) throw new TypeError(`${where}unknown field ${JSON.stringify(name)}`);
    if (value !== undefined && value !== null) body[wire] = value;
  }
  if (typeof body.metric !== "string") throw new TypeError(`${where}metric is required`);
  if (body.quantity === undefined) throw new TypeError(`${where}quantity is required`);
  body.quantity = exactNumber(body.quantity, "quantity");
  if (body.unit_price !== undefined) body.unit_price = exactNumber(body.unit_price, "unitPrice");
  body.idempotency_key ??= newIdempotencyKey();
  return body;
}

function instant(value) {
  if (value === undefined || value === null) return undefined;
  if (value instanceof Date) return value.toISOString();
  return String(value);
}

function query(customer, params = {}) {
  const search = new URLSearchParams();
  if (customer !== undefined && customer !== null) search.set("customer", customer);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null) search.set(name, value);
  }
  return search;
}

/**
 * Milliseconds to wait before the next attempt, or null when the outcome is final.
 * @param {number} attempt
 * @param {{status: number, headers: Headers, text: string} | null} answer  null: no answer
 */
function retryDelay(attempt, answer) {
  if (answer !== null) {
    if (!(answer.status === 429 || answer.status >= 500)) return null;
    if ((answer.headers.get("x-should-retry") ?? "").toLowerCase() === "false") return null;
    if (errorCode(answer.text) === "spend_cap_reached") return null;
    const waited = retryAfter(answer.headers);
    if (waited !== null) return waited;
  }
  return backoff(attempt);
}

function backoff(attempt) {
  return Math.min(500 * 2 ** attempt, 8000) * (0.75 + Math.random() / 4);
}

function retryAfter(headers) {
  let ms;
  const millis = headers.get("retry-after-ms");
  const value = headers.get("retry-after");
  if (millis !== null) ms = Number(millis);
  else if (value !== null) {
    ms = /^\s*[\d.]+\s*$/.test(value) ? Number(value) * 1000 : Date.parse(value) - Date.now();
  } else return null;
  if (Number.isNaN(ms) || ms > MAX_RETRY_AFTER_MS) return null;
  return Math.max(ms, 0);
}

function errorCode(text) {
  try { return JSON.parse(text)?.error?.code ?? null; } catch { return null; }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const env = (name) => globalThis.process?.env?.[name];

/**
 * A client of Payware's usage and billing API.
 *
 * The key is the admin key (`server.admin_key`), which names the customer on every call, or a
 * customer key, which reads its own data. Each call is retried up to `maxRetries` times on a
 * connection error, a timeout, a 429 or a 5xx, with backoff; a record call resends the same
 * idempotency key, so it is kept once however often it is sent.
 */
export class Payware {
  /**
   * @param {string} [apiKey]  default: PAYWARE_API_KEY
   * @param {PaywareOptions} [options]
   */
  constructor(apiKey, options = {}) {
    const key = apiKey ?? env("PAYWARE_API_KEY");
    if (!key) throw new Error('give the Payware key: new Payware("pk_...") or set PAYWARE_API_KEY');
    const url = (options.baseURL ?? options.baseUrl ?? env("PAYWARE_BASE_URL") ?? DEFAULT_BASE_URL)
      .replace(/\/+$/, "").replace(/\/v1$/, "");
    const maxRetries = options.maxRetries ?? DEFAULT_MAX_RETRIES;
    if (!(Number.isInteger(maxRetries) && maxRetries >= 0)) throw new RangeError("maxRetries must be an integer of 0 or more");
    /** @readonly */ this.baseURL = url;
    /** @readonly */ this.timeout = options.timeout ?? DEFAULT_TIMEOUT_MS;
    /** @readonly */ this.maxRetries = maxRetries;
    this._apiKey = key;
    this._fetch = options.fetch ?? globalThis.fetch;
    /** Record custom usage; read a customer's summary and events. */
    this.usage = new Usage(this);
    /** A customer's spend cap and closed statements. */
    this.billing = new Billing(this);
  }

  /**
   * Send one logical call, retrying as the policy says; returns the parsed answer.
   * @param {{method: string, path: string, query?: URLSearchParams, body?: unknown,
   *          parse?: (text: string) => any}} call
   */
  async request({ method, path, query: search, body, parse = JSON.parse }) {
    const qs = search && [...search.keys()].length ? `?${search}` : "";
    const url = this.baseURL + path + qs;
    const payload = body === undefined ? undefined : JSON.stringify(body); // encoded once: every retry sends it as is
    const headers = { Authorization: `Bearer ${this._apiKey}`, Accept: "application/json",
      "User-Agent": `payware-js/${VERSION}` };
    if (payload !== undefined) headers["Content-Type"] = "application/json";
    for (let attempt = 0; ; attempt++) {
      let answer = null;
      let failure;
      try {
        const response = await this._fetch(url, { method, headers, body: payload, signal: AbortSignal.timeout(this.timeout) });
        answer = { status: response.status, headers: response.headers, text: await response.text() };
      } catch (error) {
        failure = error?.name === "TimeoutError"
          ? new APITimeoutError(`no answer from ${url} within ${this.timeout} ms`, { cause: error })
          : new APIConnectionError(`connection to ${url} failed: ${error?.cause?.message ?? error?.message ?? error}`,
            { cause: error });
      }
      if (answer !== null && answer.status < 400) return parse(answer.text);
      const delay = attempt < this.maxRetries ? retryDelay(attempt, answer) : null;
      if (delay === null) throw failure ?? errorFrom(answer.status, answer.headers, answer.text);
      await sleep(delay);
    }
  }
}

/** `pw.usage`: record custom usage; read a customer's summary and events. */
export class Usage {
  /** @param {Payware} client */
  constructor(client) { this._client = client; }

  /**
   * Record `quantity` units of `metric` for `customer`. Without `unitPrice` the customer's plan
   * prices the metric. Without `idempotencyKey` one is generated for this call and reused on
   * each of its retries; give your own (a job or step id) to make replays record once too.
   * @param {RecordInput} input
   * @returns {Promise<RecordResult>}
   */
  async record(input) {
    return this._client.request({ method: "POST", path: "/v1/usage/records", body: recordBody(input) });
  }

  /**
   * Record up to 1,000 records in one call, all or nothing; one result per record. Each record
   * without an idempotency key gets its own, reused on every retry of the batch.
   * @param {RecordInput[]} records
   * @param {{customer?: string}} [options]  the customer of every record, named once
   * @returns {Promise<RecordResult[]>}
   */
  async recordBatch(records, { customer } = {}) {
    if (!Array.isArray(records) || records.length === 0) throw new TypeError("recordBatch needs a non-empty array");
    const body = { records: records.map((r, i) => recordBody(r, `records[${i}]: `)) };
    if (customer !== undefined) body.customer = customer;
    const answer = await this._client.request({ method: "POST", path: "/v1/usage/records", body });
    return answer.data;
  }

  /**
   * The customer's open period as GET /v1/usage/summary shows it (period, tokens, amount_due,
   * cap, by_model, …), plus `total`: the tokens' total (`tokens.total`).
   * @param {string} [customer]  required with the admin key
   * @returns {Promise<Record<string, any> & {total: number}>}
   */
  async summary(customer) {
    const summary = await this._client.request({ method: "GET", path: "/v1/usage/summary", query: query(customer) });
    if (summary.tokens && summary.total === undefined) summary.total = summary.tokens.total;
    return summary;
  }

  /**
   * The customer's usage events (the ledger's evidence), oldest first. Money stays decimal strings.
   * @param {string} [customer]
   * @param {EventFilters} [filters]
   * @returns {Promise<Record<string, any>[]>}
   */
  async events(customer, filters = {}) {
    return this._client.request({ method: "GET", path: "/v1/usage/events", query: eventQuery(customer, filters, "jsonl"),
      parse: (text) => text.split("\n").filter((line) => line.trim()).map((line) => JSON.parse(line)) });
  }

  /**
   * The same events as CSV text.
   * @param {string} [customer]
   * @param {EventFilters} [filters]
   * @returns {Promise<string>}
   */
  async exportCsv(customer, filters = {}) {
    return this._client.request({ method: "GET", path: "/v1/usage/events", query: eventQuery(customer, filters, "csv"),
      parse: (text) => text });
  }
}

function eventQuery(customer, filters, format) {
  const known = new Set(["from", "to", "session", "model", "feature", "period"]);
  for (const name of Object.keys(filters)) if (!known.has(name)) throw new TypeError(`unknown filter ${JSON.stringify(name)}`);
  return query(customer, { ...filters, from: instant(filters.from), to: instant(filters.to), format });
}

/** `pw.billing`: a customer's spend cap and closed statements. */
export class Billing {
  /** @param {Payware} client */
  constructor(client) { this._client = client; }

  /**
   * The caps in force and what is spent, held and remaining.
   * @param {string} [customer]
   * @returns {Promise<Record<string, any>>}
   */
  async cap(customer) {
    return this._client.request({ method: "GET", path: "/v1/billing/cap", query: query(customer) });
  }

  /**
   * Set the customer's own cap (at most the operator's); null removes it. Returns the new cap view.
   * @param {string | undefined} customer
   * @param {Quantity | null} amount
   * @returns {Promise<Record<string, any>>}
   */
  async setCap(customer, amount) {
    const value = amount === null ? null : String(exactNumber(amount, "amount"));
    return this._client.request({ method: "PUT", path: "/v1/billing/cap", query: query(customer), body: { amount: value } });
  }

  /**
   * The customer's closed periods, newest first, each with its line items and total.
   * @param {string} [customer]
   * @returns {Promise<Record<string, any>[]>}
   */
  async statements(customer) {
    const answer = await this._client.request({ method: "GET", path: "/v1/billing/statements", query: query(customer) });
    return answer.data;
  }
}

export default Payware;
