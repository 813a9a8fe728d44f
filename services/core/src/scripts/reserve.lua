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
         The numbers are integer replies, except reserved_at_ms and epoch of a fresh
         reservation: strings of their digits (read both as integers).
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

-- Why it is written this way (the goal is about 10 µs inside Redis per fresh
-- reservation; loadtest/reserve-cost.sh measures it, on Redis 7.0):
-- * A number crossing between Lua and Redis costs about as much as a redis.call's own
--   overhead: a Lua number passed to redis.call is printed with snprintf("%.17g"), one
--   concatenated with "%.14g", and tonumber() runs strtod (some 1,500 instructions
--   each). So the hot path hands Redis the strings it already has (the caller's
--   quantity, the sale's epoch, the time cut from TIME's own digits), skips the
--   conversions a check does not need (one unit, no window, no floor, no limit, a
--   buyer's first unit) and converts only what it must compare.
-- * A redis.call costs some 4,000 instructions before the command does anything, so
--   the per-user HGET is skipped on sales without a limit.
-- Everything is still checked before anything is written, in the same order.

local call = redis.call
local meta, stock, buyers, idem, reservations, events, holds =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local rid, user_id, qty_s, idem_key = ARGV[1], ARGV[3], ARGV[4], ARGV[5]
local floor_epoch, floor_seq = ARGV[6], ARGV[7]

local sale = call('HMGET', meta, 'limit', 'starts_at_ms', 'ends_at_ms', 'epoch', 'seq', 'suspended', 'hold_ms')
if sale[6] then
  return redis.error_reply('SALE_RECOVERING the sale is suspended until Redis is rebuilt from PostgreSQL')
end
-- The position as Redis stores it (decimal digits, written by HINCRBY or from an
-- integer). A sale created before positions existed is in epoch 1; a missing sale is at 0.
local epoch = sale[4] or (sale[1] and '1' or '0')
local seq = sale[5] or '0'
-- Below the caller's floor? Equal strings are equal positions; only a differing part
-- is compared as a number (no floor, "0" "0", is never above a position).
local below = false
if floor_epoch ~= epoch then
  if floor_epoch ~= '0' or floor_seq ~= '0' then
    local e, fe = tonumber(epoch) or (sale[1] and 1 or 0), tonumber(floor_epoch) or 0
    below = e < fe or (e == fe and (tonumber(seq) or 0) < (tonumber(floor_seq) or 0))
  end
elseif floor_seq ~= seq then
  below = (tonumber(seq) or 0) < (tonumber(floor_seq) or 0)
end
if below then
  local now = call('TIME')
  -- The token is the time as seconds.microseconds (TIME does not zero-pad them).
  call('HSET', meta, 'suspended', string.format('%d.%06d', now[1], now[2]),
    'suspended_reason', 'reserve: Redis at ' .. epoch .. '.' .. seq ..
    ' is below the floor ' .. floor_epoch .. '.' .. floor_seq)
  return redis.error_reply('SALE_RECOVERING Redis went back in time; the sale is suspended')
end

-- A reservation already recorded: answer it again (same reservation id, or the
-- reservation the Idempotency-Key points at). The fields are split on '|', which
-- ids cannot contain.
local found, record = rid, call('HGET', reservations, rid)
if not record and idem_key ~= '' then
  found = call('HGET', idem, idem_key)
  if found then
    record = call('HGET', reservations, found) or ''
  end
end
if record then
  local _, r_user, r_qty, stream_id, at = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
  if r_user ~= user_id or tonumber(r_qty) ~= tonumber(qty_s) then
    return redis.error_reply('IDEMPOTENCY_MISMATCH key was used for another user or quantity')
  end
  local expires_at = tonumber(call('ZSCORE', holds, found) or '0')
  return {'replayed', found, stream_id, tonumber(call('GET', stock) or '0'), tonumber(at),
          tonumber(epoch) or (sale[1] and 1 or 0), tonumber(seq) or 0, expires_at}
end

if not sale[1] then
  return redis.error_reply('UNKNOWN_SALE no sale with this id')
end

-- Redis time in epoch ms, as digits: the seconds, then the microseconds' first three
-- digits once zero-padded to six.
local now = call('TIME')
local now_ms = now[1] .. string.sub('00000' .. now[2], -6, -4)
local starts_at, ends_at = sale[2], sale[3]
if starts_at ~= '0' or ends_at ~= '0' then
  local t, ends = tonumber(now_ms), tonumber(ends_at)
  if t < tonumber(starts_at) or (ends > 0 and t >= ends) then
    return redis.error_reply('SALE_CLOSED the sale is not open now')
  end
end

-- One unit, by far the most common ask, needs no conversion at all.
local qty = 1
if qty_s ~= '1' then
  qty = tonumber(qty_s)
  if not qty or qty < 1 or qty ~= math.floor(qty) then
    return redis.error_reply('BAD_QUANTITY quantity must be an integer >= 1')
  end
  -- Redis gets the caller's digits unless they are not the integer's own (a sign, a
  -- leading zero, a fraction, too many digits to be exact): then the number, as before.
  if qty > 1e15 or not string.find(qty_s, '^[1-9]%d*$') then
    qty_s = qty
  end
end

local limit = sale[1]
if limit ~= '0' then
  local held = call('HGET', buyers, user_id)
  -- A buyer's first unit is within any limit (a limit is 0, none, or at least 1).
  if held or qty ~= 1 then
    local max = tonumber(limit)
    if max > 0 and (held and tonumber(held) or 0) + qty > max then
      return redis.error_reply('LIMIT_EXCEEDED per-user limit reached')
    end
  end
end

-- The stock is an integer's digits (SET, DECRBY, INCRBY): for one unit, "0" or a sign
-- is too few. (A stock that is no integer fails DECRBY below, before any write.)
local remaining = call('GET', stock)
if not remaining or (qty == 1 and (remaining == '0' or string.byte(remaining) == 45))
    or (qty ~= 1 and tonumber(remaining) < qty) then
  return redis.error_reply('SOLD_OUT no stock left')
end

-- All checks passed: write.
remaining = call('DECRBY', stock, qty_s)
call('HINCRBY', buyers, user_id, qty_s)
call('HINCRBY', meta, 'reserved', qty_s)
seq = call('HINCRBY', meta, 'seq', '1')
local hold_ms = sale[7]
hold_ms = hold_ms and hold_ms ~= '0' and tonumber(hold_ms) or 0
local expires_at = 0
local stream_id
if idem_key == '' and hold_ms <= 0 then
  stream_id = call('XADD', events, '*', 'type', 'reserved', 'reservation_id', rid, 'sale_id', ARGV[2],
    'user_id', user_id, 'quantity', qty_s, 'reserved_at_ms', now_ms, 'epoch', epoch, 'seq', seq)
else
  -- The same event, plus the Idempotency-Key and a hold's deadline.
  local fields = {'type', 'reserved', 'reservation_id', rid, 'sale_id', ARGV[2], 'user_id', user_id,
    'quantity', qty_s, 'reserved_at_ms', now_ms, 'epoch', epoch, 'seq', seq}
  if idem_key ~= '' then
    fields[#fields + 1] = 'idempotency_key'
    fields[#fields + 1] = idem_key
    call('HSET', idem, idem_key, rid)
  end
  if hold_ms > 0 then
    expires_at = tonumber(now_ms) + hold_ms
    fields[#fields + 1] = 'expires_at_ms'
    fields[#fields + 1] = expires_at
    call('ZADD', holds, expires_at, rid)
  end
  stream_id = call('XADD', events, '*', unpack(fields))
end
call('HSET', reservations, rid, 'reserved|' .. user_id .. '|' .. qty_s .. '|' .. stream_id .. '|' .. now_ms)
return {'reserved', rid, stream_id, remaining, now_ms, epoch, seq, expires_at}
