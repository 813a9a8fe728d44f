--[[
sale_snapshot.lua: read a sale's Redis-side figures in one atomic step (read-only), so
that `remaining`, `reserved` and `released` are taken at the same instant.

KEYS[1]  meta    hash    initial, limit, starts_at_ms, ends_at_ms, reserved, released,
                         suspended
KEYS[2]  stock   string  units still on sale
KEYS[3]  events  stream  the sale's event stream
KEYS[4]  holds   zset    holds not settled in Redis

Returns  {} when the sale does not exist, {"suspended"} when Redis holds nothing of
         the sale but its suspension (it is being rebuilt), else
         {initial, remaining, reserved, released, limit, starts_at_ms, ends_at_ms,
          stream_length, suspended (1/0), hold_ms, max_hold_ms, holds_waiting}

Example:
  EVALSHA <sha> 4 {sale:s1}:meta {sale:s1}:stock {sale:s1}:events {sale:s1}:holds
]]

local m = redis.call('HMGET', KEYS[1], 'initial', 'reserved', 'released', 'limit', 'starts_at_ms', 'ends_at_ms', 'suspended', 'hold_ms', 'max_hold_ms')
if not m[1] then
  if m[7] then
    return {'suspended'}
  end
  return {}
end
local remaining = tonumber(redis.call('GET', KEYS[2]) or '0')
local length = redis.call('XLEN', KEYS[3])
return {tonumber(m[1]), remaining, tonumber(m[2]), tonumber(m[3]), tonumber(m[4]),
        tonumber(m[5]), tonumber(m[6]), length, m[7] and 1 or 0,
        tonumber(m[8] or '0'), tonumber(m[9] or '0'), redis.call('ZCARD', KEYS[4])}
