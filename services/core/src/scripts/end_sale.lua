--[[
end_sale.lua: close a sale now in Redis, as PostgreSQL already recorded it
(`yoink sale end`), so reserve.lua answers SALE_CLOSED from the next call on.

KEYS[1]  meta   hash   starts_at_ms, ends_at_ms (0 = never), initial (present on a real sale)

ARGV[1]  ends_at_ms    PostgreSQL's `ends_at`, epoch ms (> 0)
ARGV[2]  starts_at_ms  PostgreSQL's `starts_at`, epoch ms (0 = none)

Returns  1  the window was written now
         0  Redis already closed the sale at or before ARGV[1]; nothing written
        -1  Redis holds no such sale (never created, archived, or only a suspension
            left): nothing written, never a key created; a rebuild takes PostgreSQL's
            window anyway

It never reopens a sale: an `ends_at_ms` already at or before ARGV[1] is kept.

Example:
  EVALSHA <sha> 1 {sale:s1}:meta 1764193200000 0
]]

local meta = KEYS[1]
local ends_at, starts_at = tonumber(ARGV[1]), ARGV[2]
if not ends_at or ends_at <= 0 then
  return redis.error_reply('BAD_TIME ends_at_ms must be a positive integer')
end
local m = redis.call('HMGET', meta, 'initial', 'ends_at_ms')
if not m[1] then
  return -1
end
local current = tonumber(m[2]) or 0
if current > 0 and current <= ends_at then
  return 0
end
redis.call('HSET', meta, 'ends_at_ms', ARGV[1], 'starts_at_ms', starts_at)
return 1
