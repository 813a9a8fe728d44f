--[[
hold.lua: apply in Redis a decision PostgreSQL made about a hold (a confirm or an
extension), and append it to the sale's stream, once. Cancels and expiries give units
back, so they go through release.lua instead.

PostgreSQL decides first (the hold's row, locked); this script only follows. It is
idempotent: a decision already applied changes nothing and appends nothing, so the API
and the projectors' expiry sweep may both apply the same decision.

KEYS[1]  meta    hash    ... suspended (while set, nothing is written)
KEYS[2]  holds   zset    reservation_id -> expires_at_ms of holds not settled in Redis
KEYS[3]  events  stream  the sale's event stream

ARGV[1]  op              "confirm": the hold became an order; it leaves `holds` and a
                         `confirmed` event is appended
                         "extend": the hold's deadline moved; its score becomes
                         ARGV[3] and an `extended` event is appended
ARGV[2]  reservation_id
ARGV[3]  confirm: the order id; extend: the new expires_at_ms

Returns  1 when applied now (and the event appended), 0 when there was nothing to do
         (already applied, or the hold is not waiting in Redis any more)
Errors   SALE_RECOVERING  the sale is suspended until Redis is rebuilt from PostgreSQL;
                          nothing written (the rebuild restores holds from PostgreSQL)

Example:
  EVALSHA <sha> 3 {sale:s1}:meta {sale:s1}:holds {sale:s1}:events confirm 0190f1c2-... 0190f1d0-...
]]

local meta, holds, events = KEYS[1], KEYS[2], KEYS[3]
local op, rid, value = ARGV[1], ARGV[2], ARGV[3]

if redis.call('HEXISTS', meta, 'suspended') == 1 then
  return redis.error_reply('SALE_RECOVERING the sale is suspended until Redis is rebuilt from PostgreSQL')
end

if op == 'confirm' then
  if redis.call('ZREM', holds, rid) == 0 then
    return 0
  end
  redis.call('XADD', events, '*', 'type', 'confirmed', 'reservation_id', rid, 'order_id', value)
  return 1
end

if op == 'extend' then
  local current = redis.call('ZSCORE', holds, rid)
  if not current or tonumber(current) == tonumber(value) then
    return 0
  end
  redis.call('ZADD', holds, 'XX', value, rid)
  redis.call('XADD', events, '*', 'type', 'extended', 'reservation_id', rid, 'expires_at_ms', value)
  return 1
end

return redis.error_reply('BAD_OP op must be confirm or extend')
