--[[
release.lua: give one reservation's units back to the sale, exactly once.

Called only after PostgreSQL recorded the reservation's fate as *released* (so it can
never also become an order). Idempotent per reservation id: a retried or raced release
returns "already" and changes nothing.

KEYS[1]  meta          hash    ... reserved, released (units), suspended
KEYS[2]  stock         string  units still on sale
KEYS[3]  buyers        hash    user_id -> units the user holds
KEYS[4]  reservations  hash    reservation_id -> "state|user_id|quantity|stream_id|reserved_at_ms"
KEYS[5]  events        stream  the sale's event stream
KEYS[6]  holds         zset    reservation_id -> expires_at_ms of holds not settled in
                               Redis; a released hold leaves it (ZREM)

ARGV[1]  reservation_id
ARGV[2]  reason            short text stored on the `released` event (`cancelled` and
                          `expired` for holds)

Returns  {outcome, quantity}
         outcome "released": units went back on sale now, a `released` event was appended
         outcome "already":  this reservation was released before; nothing written
         outcome "unknown":  Redis holds no such reservation (nothing was taken); nothing written
         outcome "malformed": the reservation's record cannot be read (it must be
                             `state|user_id|quantity|stream_id|reserved_at_ms`, state
                             `reserved` or `released`, a user, a quantity of 1 to 15
                             digits); nothing written, nothing given back (quantity 0).
                             Retrying cannot make it readable: the caller records that
                             the units stay taken
Errors   SALE_RECOVERING     the sale is suspended until Redis is rebuilt from PostgreSQL;
                             nothing written (the rebuild gives the units back from
                             PostgreSQL's ledger and marks the reservation released, so a
                             retry after it answers "already")

Example:
  EVALSHA <sha> 6 {sale:s1}:meta {sale:s1}:stock {sale:s1}:buyers {sale:s1}:reservations \
    {sale:s1}:events {sale:s1}:holds 0190f1c2-... "dead-lettered: sale missing in PostgreSQL"
]]

local meta, stock, buyers, reservations, events, holds =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local rid, reason = ARGV[1], ARGV[2]

if redis.call('HEXISTS', meta, 'suspended') == 1 then
  return redis.error_reply('SALE_RECOVERING the sale is suspended until Redis is rebuilt from PostgreSQL')
end

local record = redis.call('HGET', reservations, rid)
if not record then
  return {'unknown', 0}
end
local state, user_id, qty, stream_id, at = string.match(record, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
-- Give nothing back from a record that cannot be read: units it cannot count, or a buyer
-- it cannot name, would break `stock = initial - reserved + released`. A Lua error here
-- instead would fail every retry the same way, forever.
if (state ~= 'reserved' and state ~= 'released') or user_id == ''
    or not string.match(qty, '^[1-9][0-9]*$') or #qty > 15 then
  return {'malformed', 0}
end
if state == 'released' then
  redis.call('ZREM', holds, rid)
  return {'already', tonumber(qty)}
end

redis.call('INCRBY', stock, qty)
redis.call('HINCRBY', buyers, user_id, -tonumber(qty))
redis.call('HINCRBY', meta, 'released', qty)
redis.call('HSET', reservations, rid,
  'released|' .. user_id .. '|' .. qty .. '|' .. stream_id .. '|' .. at)
redis.call('ZREM', holds, rid)
redis.call('XADD', events, '*',
  'type', 'released',
  'reservation_id', rid,
  'user_id', user_id,
  'quantity', qty,
  'reason', reason)
return {'released', tonumber(qty)}
