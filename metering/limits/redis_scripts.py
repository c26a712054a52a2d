"""The Lua scripts behind the Redis budget and rate limiter: each call is one atomic script.

Why scripts: a check and the write it allows must happen with nothing in between, across every
proxy sharing the Redis; a script runs alone on the server. The clock is the server's `TIME`,
so proxies with skewed clocks still agree on when a hold expires or a bucket drains.

Integers only: Lua numbers are doubles, exact up to 2^53. Every number sent back to Redis goes
through `fmt` (`%d`), never through Lua's own number-to-string (`%.14g`, which loses digits).
"""

from __future__ import annotations

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end  -- needed before TIME on Redis < 5
local function fmt(n) return string.format('%d', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# Budget: KEYS = spent (hash scope->units, signed), held (hash scope->units), holds (hash
# id->json), expiry (zset id->expiry ms), applied (zset of settled hold ids and event ids -> the ms
# until which each is kept once the period is seeded), seeded (string "<generation>|<ready at,
# ms>": the period's spend was merged from the ledger).
# ARGV[1] is always the period keys' TTL in seconds. APPLIED_MS (how long an applied id is kept)
# is written into the text by `budget_script`: every script needs it, none takes it per call.
_BUDGET_PRELUDE = _PRELUDE + """
local SPENT, HELD, HOLDS, EXPIRY, APPLIED, SEEDED = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local APPLIED_MS = $APPLIED_MS

local function unhold(raw)
  local h = cjson.decode(raw)
  for _, s in ipairs(h.s) do
    if redis.call('HINCRBY', HELD, s, fmt(-tonumber(h.u))) == 0 then redis.call('HDEL', HELD, s) end
  end
end

local function drop(id)
  local raw = redis.call('HGET', HOLDS, id)
  if not raw then return false end
  unhold(raw)
  redis.call('HDEL', HOLDS, id)
  redis.call('ZREM', EXPIRY, id)
  return true
end

-- Holds of crashed proxies (no renewal for a ttl): free their units before anything reads `held`.
local function prune(now)
  local expired = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', fmt(now))
  for _, id in ipairs(expired) do
    local raw = redis.call('HGET', HOLDS, id)
    if raw then
      unhold(raw)
      redis.call('HDEL', HOLDS, id)
    end
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', EXPIRY, '-inf', fmt(now)) end
end

local function touch()
  for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end

-- The keys a script wrote live key_ttl more; the rest keep theirs. NOTE: spent, the applied ids
-- and the seed marker always together: a marker that expired before the spend it vouches for
-- would have the next reserve merge the ledger into that spend again (every event twice).
local function touch_holds()
  redis.call('EXPIRE', HELD, ARGV[1])
  redis.call('EXPIRE', HOLDS, ARGV[1])
  redis.call('EXPIRE', EXPIRY, ARGV[1])
end
local function touch_spent()
  redis.call('EXPIRE', SPENT, ARGV[1])
  redis.call('EXPIRE', APPLIED, ARGV[1])
  redis.call('EXPIRE', SEEDED, ARGV[1])
end

-- Spent as a cap sees it: a volume tier's negative marginal amount is a credit, never below 0.
local function usage(scope)
  local spent = tonumber(redis.call('HGET', SPENT, scope) or '0')
  return math.max(spent, 0), tonumber(redis.call('HGET', HELD, scope) or '0')
end

-- {generation, ms until the recovery window ends}; generation '' while never seeded.
local function seeded(now)
  local raw = redis.call('GET', SEEDED)
  if not raw then return '', 0 end
  local bar = string.find(raw, '|', 1, true)
  return string.sub(raw, 1, bar - 1), math.max(0, tonumber(string.sub(raw, bar + 1)) - now)
end

-- `keep`: the ms until which the id is remembered once the period is seeded (now + APPLIED_MS).
local function spend(id, units, first, last, keep)
  if redis.call('ZADD', APPLIED, 'NX', keep, id) == 0 then return 0 end
  for i = first, last do redis.call('HINCRBY', SPENT, ARGV[i], units) end
  return 1
end

-- Applied ids past their window go, but none before the period is seeded: the seed may still
-- merge any of them from the ledger. Reserves do it (they know the period is seeded; every
-- settle follows one), and so does add_spent (it may come without a reserve).
local function forget_applied(now)
  redis.call('ZREMRANGEBYSCORE', APPLIED, '-inf', fmt(now))
end
"""

# ARGV: key_ttl, hold_id, units, ttl_ms, report (1-based scope index), then per scope: name, limit|'', mode.
# Returns {status, scope index, spent, held, limit|-1, units, generation, wait ms}; status 0 refused,
# 1 granted, 2 granted earlier (a retried reserve of a live hold: nothing more is held),
# 3 not seeded (merge the ledger first: the store lost or never had this period), 4 recovering
# (seeded after a loss: other proxies are still putting back their calls in flight; wait ms).
BUDGET_RESERVE = _BUDGET_PRELUDE + """
local now = now_ms()
local generation, wait = seeded(now)
if generation == '' then return {3, 0, 0, 0, -1, 0, '', 0} end
if wait > 0 then return {4, 0, 0, 0, -1, 0, generation, wait} end
prune(now)
forget_applied(now)
local id, units_s, ttl_ms, report = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local units = tonumber(units_s)
local scopes, limits, modes = {}, {}, {}
for i = 6, #ARGV, 3 do
  scopes[#scopes + 1] = ARGV[i]
  limits[#limits + 1] = ARGV[i + 1]
  modes[#modes + 1] = ARGV[i + 2]
end
local seen = {}  -- scope index -> {spent, held} as the check read them
local function answer(status, i, held_units, added)
  if i == 0 then return {status, 0, 0, 0, -1, held_units, generation, 0} end
  local spent, held
  if seen[i] then spent, held = seen[i][1], seen[i][2] + added else spent, held = usage(scopes[i]) end
  local limit = limits[i] == '' and -1 or tonumber(limits[i])
  return {status, i, spent, held, limit, held_units, generation, 0}
end

local existing = redis.call('HGET', HOLDS, id)
if existing then return answer(2, report, tonumber(cjson.decode(existing).u), 0) end

-- NOTE: check every scope before writing any: a refusal must hold nothing anywhere.
for i, scope in ipairs(scopes) do
  if limits[i] ~= '' then
    local limit = tonumber(limits[i])
    local spent, held = usage(scope)
    seen[i] = {spent, held}
    local ok
    if modes[i] == 'hard' then ok = spent + held + units <= limit else ok = spent < limit end
    if not ok then return answer(0, i, 0, 0) end
  end
end
for _, scope in ipairs(scopes) do redis.call('HINCRBY', HELD, scope, units_s) end
redis.call('HSET', HOLDS, id, cjson.encode({u = units_s, s = scopes}))
redis.call('ZADD', EXPIRY, fmt(now + ttl_ms), id)
touch_holds()
return answer(1, report, units, units)
"""

# ARGV: key_ttl, hold_id, actual_units (signed), then the hold's scope names. Returns 1, or 0 if
# settled before. It counts on an unseeded period too: seeding merges by id, so nothing doubles.
BUDGET_SETTLE = _BUDGET_PRELUDE + """
local now = now_ms()
-- NOTE: the applied set, not the hold, makes settle idempotent: the hold may have expired. No
-- prune: nothing here reads `held` (reserves and usage prune first); drop frees this hold either way.
local first = spend(ARGV[2], ARGV[3], 4, #ARGV, fmt(now + APPLIED_MS))
drop(ARGV[2])
touch_spent()
return first
"""

# ARGV: key_ttl, hold_id. Returns 1 if the hold was live, else 0.
BUDGET_RELEASE = _BUDGET_PRELUDE + """
prune(now_ms())
if not drop(ARGV[2]) then return 0 end
touch()
return 1
"""

# ARGV: key_ttl, event_id, units (signed), then scope names. Returns 1, or 0 if counted before.
BUDGET_ADD_SPENT = _BUDGET_PRELUDE + """
local now = now_ms()
if redis.call('EXISTS', SEEDED) == 1 then forget_applied(now) end
local first = spend(ARGV[2], ARGV[3], 4, #ARGV, fmt(now + APPLIED_MS))
touch()
return first
"""

# ARGV: key_ttl, scope. Returns {spent (never below 0), held, seeded 1|0}.
BUDGET_USAGE = _BUDGET_PRELUDE + """
local now = now_ms()
prune(now)
local spent, held = usage(ARGV[2])
return {spent, held, (seeded(now)) ~= '' and 1 or 0}
"""

# Holds of calls in flight, from the proxy that runs them: each is kept alive for ttl_ms more,
# and put back if the store lost it (not if it was settled: the applied set says so).
# ARGV: key_ttl, ttl_ms, then per hold: id, units, scope count, scope names. Returns the generation.
BUDGET_RENEW = _BUDGET_PRELUDE + """
local now = now_ms()
prune(now)
local expires_at = fmt(now + tonumber(ARGV[2]))
local i = 3
while i <= #ARGV do
  local id, units, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if not redis.call('ZSCORE', APPLIED, id) then
    if redis.call('HEXISTS', HOLDS, id) == 0 then
      local scopes = {}
      for j = 1, n do
        scopes[j] = ARGV[i + 2 + j]
        redis.call('HINCRBY', HELD, scopes[j], units)
      end
      redis.call('HSET', HOLDS, id, cjson.encode({u = units, s = scopes}))
    end
    redis.call('ZADD', EXPIRY, expires_at, id)
  end
  i = i + 3 + n
end
if #ARGV > 2 then touch() end
return (seeded(now))
"""

# Merge events into spent, each once (by id: what is already applied stays as it is), then, on the
# last chunk, mark the period seeded. ARGV: key_ttl, last 1|0, generation, ready_in_ms, then per
# event: id, units (signed), scope count, scope names. Returns 1.
BUDGET_SEED = _BUDGET_PRELUDE + """
local keep = fmt(now_ms() + APPLIED_MS)
local i = 5
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  spend(ARGV[i], ARGV[i + 1], i + 3, i + 2 + n, keep)
  i = i + 3 + n
end
if ARGV[2] == '1' and not redis.call('GET', SEEDED) then
  redis.call('SET', SEEDED, ARGV[3] .. '|' .. fmt(now_ms() + tonumber(ARGV[4])))
end
touch()
return 1
"""

# Drop the whole period, as a Redis that lost its data would (to rebuild it). ARGV: key_ttl. Returns 1.
BUDGET_FORGET = _BUDGET_PRELUDE + """
redis.call('DEL', SPENT, HELD, HOLDS, EXPIRY, APPLIED, SEEDED)
return 1
"""


# How long ago the period's seed was ready. ARGV: key_ttl. Returns {1, ms since (negative within
# the recovery window)}, or {0, 0} while the period is not seeded.
BUDGET_SEEDED_FOR = _BUDGET_PRELUDE + """
local now = now_ms()
local raw = redis.call('GET', SEEDED)
if not raw then return {0, 0} end
local bar = string.find(raw, '|', 1, true)
return {1, now - tonumber(string.sub(raw, bar + 1))}
"""


def budget_script(script: str, applied_ms: int) -> str:
    """A budget script's text with its applied-id window (ms) written in."""
    return script.replace("$APPLIED_MS", str(int(applied_ms)))


# Rate limits: one hash per limit (KEYS[i]) with fields r (request level), t (token level),
# ts (ms of the last drain). A level is in unit-milliseconds: each unit adds WINDOW_MS, a rate
# of R per minute drains R per ms, and the bucket holds R * WINDOW_MS (see metering.limits.ratelimit).
_RATE_PRELUDE = _PRELUDE + """
local W = 60000
local function drained(key, now, rpm, tpm)
  local st = redis.call('HMGET', key, 'r', 't', 'ts')
  local r, t, ts = tonumber(st[1] or '0'), tonumber(st[2] or '0'), tonumber(st[3] or '0')
  local elapsed = math.max(0, now - ts)  -- a clock step back (failover) must not add debt
  if rpm then r = math.max(0, r - rpm * elapsed) else r = 0 end
  if tpm then t = math.max(0, t - tpm * elapsed) else t = 0 end
  return r, t
end
local function store(key, now, r, t, rpm, tpm)
  redis.call('HSET', key, 'r', fmt(r), 't', fmt(t), 'ts', fmt(now))
  local empty_in = 0  -- ms until both buckets are empty: after that the key carries no state
  if rpm then empty_in = math.max(empty_in, math.ceil(r / rpm)) end
  if tpm then empty_in = math.max(empty_in, math.ceil(t / tpm)) end
  redis.call('PEXPIRE', key, fmt(empty_in + 1000))
end
local function limits()
  local out = {}
  for i = 1, #KEYS do
    out[i] = {tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])}  -- '' -> nil: no limit
  end
  return out
end
"""

# ARGV: tokens, then per key: rpm|'', tpm|''. Returns {allowed, r1, t1, r2, t2, ...}: the levels
# after the grant, or before it when refused (then nothing was written).
RATE_ACQUIRE = _RATE_PRELUDE + """
local now, tokens, lim = now_ms(), tonumber(ARGV[1]), limits()
local out, levels, allowed = {1}, {}, true
for i, key in ipairs(KEYS) do
  local rpm, tpm = lim[i][1], lim[i][2]
  local r, t = drained(key, now, rpm, tpm)
  levels[i] = {r, t}
  if rpm and r + W > rpm * W then allowed = false end
  if tpm and t + tokens * W > tpm * W then allowed = false end
end
for i, key in ipairs(KEYS) do
  local rpm, tpm = lim[i][1], lim[i][2]
  local r, t = levels[i][1], levels[i][2]
  if allowed then
    if rpm then r = r + W end
    if tpm then t = t + tokens * W end
    store(key, now, r, t, rpm, tpm)
  end
  out[#out + 1] = r
  out[#out + 1] = t
end
if not allowed then out[1] = 0 end
return out
"""

# ARGV: delta_tokens, then per key: rpm|'', tpm|''. The token level moves by delta: never below 0,
# never past 10 windows of debt (so the numbers stay exact; see MAX_DEBT_WINDOWS).
RATE_ADJUST = _RATE_PRELUDE + """
local now, delta, lim = now_ms(), tonumber(ARGV[1]), limits()
for i, key in ipairs(KEYS) do
  local rpm, tpm = lim[i][1], lim[i][2]
  if tpm then
    local r, t = drained(key, now, rpm, tpm)
    t = math.min(math.max(0, t + delta * W), 10 * tpm * W)
    store(key, now, r, t, rpm, tpm)
  end
end
return 1
"""
