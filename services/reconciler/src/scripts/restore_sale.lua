--[[
restore_sale.lua: rebuild one sale's stock, counters and buyer counts from figures
computed out of PostgreSQL's ledger, but only if Redis still holds exactly what the
plan was computed from (compare-and-set): a buy that slipped in meanwhile makes the
script refuse, and the reconciler plans again.

KEYS[1]  meta    hash    initial, limit, starts_at_ms, ends_at_ms, reserved, released
KEYS[2]  stock   string  units on sale now
KEYS[3]  buyers  hash    user_id -> units held

ARGV[1]  expected meta_exists (0/1)       ARGV[2]  expected reserved
ARGV[3]  expected released                ARGV[4]  expected stock
ARGV[5]  initial   ARGV[6] limit   ARGV[7] starts_at_ms   ARGV[8] ends_at_ms
ARGV[9]  new reserved   ARGV[10] new released   ARGV[11] new stock
ARGV[12..] user_id, units, user_id, units, ...   (new buyer counts)

Returns  1 when rebuilt.
Errors   STALE  Redis changed since the plan was made; nothing was written.

Example:
  EVALSHA <sha> 3 {sale:s1}:meta {sale:s1}:stock {sale:s1}:buyers \
    0 0 0 0 500 2 0 0 120 0 380 alice 2 bob 1
]]

local meta = redis.call('HMGET', KEYS[1], 'initial', 'reserved', 'released')
local exists = meta[1] and 1 or 0
local stock = tonumber(redis.call('GET', KEYS[2]) or '0')
if exists ~= tonumber(ARGV[1])
  or tonumber(meta[2] or '0') ~= tonumber(ARGV[2])
  or tonumber(meta[3] or '0') ~= tonumber(ARGV[3])
  or stock ~= tonumber(ARGV[4]) then
  return redis.error_reply('STALE Redis changed since the repair was planned')
end

redis.call('HSET', KEYS[1],
  'initial', ARGV[5], 'limit', ARGV[6], 'starts_at_ms', ARGV[7], 'ends_at_ms', ARGV[8],
  'reserved', ARGV[9], 'released', ARGV[10])
redis.call('SET', KEYS[2], ARGV[11])
redis.call('DEL', KEYS[3])
for i = 12, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
return 1
