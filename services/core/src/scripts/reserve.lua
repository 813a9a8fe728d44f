--[[
reserve.lua: take units of one sale for one buyer, atomically, and append the
`reserved` event to the sale's stream in the same step (the Redis-side outbox).

Every key belongs to one sale and carries the sale's hash tag `{sale:ID}`, so the
script runs unchanged on Redis Cluster.

KEYS[1]  meta          hash    initial, limit, starts_at_ms, ends_at_ms, reserved, released,
                               epoch, seq (the sale's position), suspended, suspended_reason,
                               hold_ms (0 or absent: no holds)
KEYS[2]  stock         string  units still on sale ("remaining")
KEYS[3]  buyers        hash    user_id -> units the user holds (reserved - released)
KEYS[4]  idempotency   hash    Idempotency-Key -> reservation_id
KEYS[5]  reservations  hash    reservation_id -> "state|user_id|quantity|stream_id|reserved_at_ms"
KEYS[6]  events        stream  the sale's event stream (XADD, never trimmed here)
KEYS[7]  holds         zset    reservation_id -> expires_at_ms, for holds not settled in
                               Redis yet (only written when the sale has hold_ms > 0)

ARGV[1]  reservation_id   UUID made by the caller before the call; the script is
                          idempotent on it, so a call whose reply was lost is retried safely
ARGV[2]  sale_id
ARGV[3]  user_id
ARGV[4]  quantity         integer >= 1
ARGV[5]  idempotency_key  "" when the client sent none
ARGV[6]  floor_epoch      the caller's floor for the sale's position: the highest
ARGV[7]  floor_seq        position it has seen Redis hand out or PostgreSQL record
                          ("0" "0" when it knows none). A position below it means Redis
                          went back in time: the sale is suspended, nothing is taken.

Returns  {outcome, reservation_id, stream_id, remaining, reserved_at_ms, epoch, seq,
          expires_at_ms}
         outcome "reserved": units were taken now, the event was appended; (epoch, seq)
                             is this reservation's position
         outcome "replayed": the reservation already existed (same reservation id or same
                             Idempotency-Key); nothing was written; (epoch, seq) is the
                             sale's current position
         expires_at_ms        when the hold expires (0: the sale has no holds, or a
                              replayed hold is already settled)
Errors (code first, as redis.error_reply):
         SALE_RECOVERING      the sale is suspended until Redis is rebuilt from PostgreSQL
                              (it was already, or this call found Redis below its floor
                              and suspended it: HSET meta suspended, suspended_reason)
         UNKNOWN_SALE         no sale with this id
         SALE_CLOSED          now is before starts_at or at/after ends_at
         BAD_QUANTITY         quantity is not an integer >= 1
         LIMIT_EXCEEDED       the user would hold more than the sale's per-user limit
         SOLD_OUT             fewer units remain than asked for
         IDEMPOTENCY_MISMATCH the Idempotency-Key was used for another user or quantity

Everything is checked before anything is written; the only write of a refused call
is the suspension itself.

Example:
  EVALSHA <sha> 7 {sale:s1}:meta {sale:s1}:stock {sale:s1}:buyers {sale:s1}:idem \
    {sale:s1}:reservations {sale:s1}:events {sale:s1}:holds 0190f1c2-... s1 alice 1 "" 1 1200
]]

local meta, stock, buyers, idem, reservations, events, holds =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local rid, sale_id, user_id, idem_key = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local qty = tonumber(ARGV[4])
local floor_epoch, floor_seq = tonumber(ARGV[6]) or 0, tonumber(ARGV[7]) or 0

local sale = redis.call('HMGET', meta, 'limit', 'starts_at_ms', 'ends_at_ms', 'epoch', 'seq', 'suspended', 'hold_ms')
if sale[6] then
  return redis.error_reply('SALE_RECOVERING the sale is suspended until Redis is rebuilt from PostgreSQL')
end
-- A sale created before positions existed is in epoch 1; a missing sale is at 0.
local epoch = tonumber(sale[4]) or (sale[1] and 1 or 0)
local seq = tonumber(sale[5]) or 0
if epoch < floor_epoch or (epoch == floor_epoch and seq < floor_seq) then
  local now = redis.call('TIME')
  -- The token is the time as seconds.microseconds (TIME does not zero-pad them).
  redis.call('HSET', meta, 'suspended', string.format('%d.%06d', now[1], now[2]),
    'suspended_reason', 'reserve: Redis at ' .. epoch .. '.' .. seq ..
    ' is below the floor ' .. floor_epoch .. '.' .. floor_seq)
  return redis.error_reply('SALE_RECOVERING Redis went back in time; the sale is suspended')
end

-- A reservation already recorded: answer it again (same reservation id, or the
-- reservation the Idempotency-Key points at). The fields are split on '|', which
-- ids cannot contain.
local function replay(existing_rid, record)
  local state, r_user, r_qty, stream_id, at = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if r_user ~= user_id or tonumber(r_qty) ~= qty then
    return redis.error_reply('IDEMPOTENCY_MISMATCH key was used for another user or quantity')
  end
  local expires_at = tonumber(redis.call('ZSCORE', holds, existing_rid) or '0')
  return {'replayed', existing_rid, stream_id, tonumber(redis.call('GET', stock) or '0'), tonumber(at), epoch, seq,
          expires_at}
end

local record = redis.call('HGET', reservations, rid)
if record then
  return replay(rid, record)
end
if idem_key ~= '' then
  local original = redis.call('HGET', idem, idem_key)
  if original then
    return replay(original, redis.call('HGET', reservations, original) or '')
  end
end

if not sale[1] then
  return redis.error_reply('UNKNOWN_SALE no sale with this id')
end
local limit, starts_at, ends_at = tonumber(sale[1]), tonumber(sale[2]), tonumber(sale[3])

local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if now_ms < starts_at or (ends_at > 0 and now_ms >= ends_at) then
  return redis.error_reply('SALE_CLOSED the sale is not open now')
end

if not qty or qty < 1 or qty ~= math.floor(qty) then
  return redis.error_reply('BAD_QUANTITY quantity must be an integer >= 1')
end

local held = tonumber(redis.call('HGET', buyers, user_id) or '0')
if limit > 0 and held + qty > limit then
  return redis.error_reply('LIMIT_EXCEEDED per-user limit reached')
end

local remaining = tonumber(redis.call('GET', stock) or '0')
if remaining < qty then
  return redis.error_reply('SOLD_OUT no stock left')
end

-- All checks passed: write.
remaining = redis.call('DECRBY', stock, qty)
redis.call('HINCRBY', buyers, user_id, qty)
redis.call('HINCRBY', meta, 'reserved', qty)
seq = redis.call('HINCRBY', meta, 'seq', 1)
-- The event's fields; a hold also carries its deadline.
local fields = {'type', 'reserved', 'reservation_id', rid, 'sale_id', sale_id, 'user_id', user_id,
  'quantity', qty, 'reserved_at_ms', now_ms, 'epoch', epoch, 'seq', seq}
if idem_key ~= '' then
  table.insert(fields, 'idempotency_key')
  table.insert(fields, idem_key)
  redis.call('HSET', idem, idem_key, rid)
end
local hold_ms = tonumber(sale[7]) or 0
local expires_at = 0
if hold_ms > 0 then
  expires_at = now_ms + hold_ms
  table.insert(fields, 'expires_at_ms')
  table.insert(fields, expires_at)
  redis.call('ZADD', holds, expires_at, rid)
end
local stream_id = redis.call('XADD', events, '*', unpack(fields))
redis.call('HSET', reservations, rid,
  'reserved|' .. user_id .. '|' .. qty .. '|' .. stream_id .. '|' .. now_ms)
return {'reserved', rid, stream_id, remaining, now_ms, epoch, seq, expires_at}
