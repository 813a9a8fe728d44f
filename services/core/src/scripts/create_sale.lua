--[[
create_sale.lua: create a sale's Redis state once; never touch an existing sale.

KEYS[1]  meta    hash    initial, limit, starts_at_ms, ends_at_ms, reserved, released,
                         epoch, seq (the position: epoch 1, no reservation yet),
                         hold_ms, max_hold_ms (0: no holds)
KEYS[2]  stock   string  units still on sale

ARGV[1]  initial stock       integer >= 0
ARGV[2]  limit per user      integer >= 0 (0 = no limit)
ARGV[3]  starts_at_ms        epoch milliseconds (0 = open now)
ARGV[4]  ends_at_ms          epoch milliseconds (0 = never closes)
ARGV[5]  hold_ms             how long a reservation is held for payment (0 = no holds)
ARGV[6]  max_hold_ms         the longest a hold may be extended to, from its reservation

Returns  1 when the sale was created, 0 when it already existed (its stock is left
         exactly as it is: creating a sale twice must never reset its stock).

Example:
  EVALSHA <sha> 2 {sale:s1}:meta {sale:s1}:stock 500 2 0 0 600000 1800000
]]

if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1],
  'initial', ARGV[1],
  'limit', ARGV[2],
  'starts_at_ms', ARGV[3],
  'ends_at_ms', ARGV[4],
  'reserved', 0,
  'released', 0,
  'epoch', 1,
  'seq', 0,
  'hold_ms', ARGV[5],
  'max_hold_ms', ARGV[6])
redis.call('SET', KEYS[2], ARGV[1])
return 1
