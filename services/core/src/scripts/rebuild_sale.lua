--[[
rebuild_sale.lua: the last step of rebuilding a suspended sale's Redis state from
PostgreSQL's ledger: swap in the staged hashes, set the counters and stock, start a new
epoch, and lift the suspension, in one atomic step, but only if the sale is still
suspended by the same suspension the rebuild started from (compare-and-set). While a
sale is suspended nothing else writes its state (reserve and release refuse), so the
token is the whole precondition.

KEYS[1]  meta                  hash    the sale's definition, counters, position, suspension
KEYS[2]  stock                 string  units on sale
KEYS[3]  buyers                hash    user_id -> units held
KEYS[4]  idempotency           hash    Idempotency-Key -> reservation id
KEYS[5]  reservations          hash    reservation id -> "state|user|qty|stream_id|reserved_at_ms"
KEYS[6]  staged buyers         hash    \
KEYS[7]  staged idempotency    hash     > built from PostgreSQL, renamed over KEYS[3..5];
KEYS[8]  staged reservations   hash    /  a missing one (nothing to hold) empties its key
KEYS[9]  holds                 zset    reservation_id -> expires_at_ms of holds waiting
KEYS[10] staged holds          zset    built from PostgreSQL's holds still 'held'

ARGV[1]  suspension token (meta `suspended`) the rebuild started from
ARGV[2]  initial   ARGV[3] limit   ARGV[4] starts_at_ms   ARGV[5] ends_at_ms
ARGV[6]  reserved (units ever taken, from the ledger)
ARGV[7]  released (units ever given back, from the ledger)
ARGV[8]  stock (initial - confirmed)
ARGV[9]  the new epoch (allocated in PostgreSQL; seq starts again at 0)
ARGV[10] hold_ms   ARGV[11] max_hold_ms (0: the sale has no holds)

Returns  1 when rebuilt and resumed.
Errors   STALE  the sale is not suspended by that token any more (Redis restarted or
                was suspended again meanwhile); nothing was written.

Example:
  EVALSHA <sha> 10 {sale:s1}:meta {sale:s1}:stock {sale:s1}:buyers {sale:s1}:idem \
    {sale:s1}:reservations {sale:s1}:buyers:rebuild {sale:s1}:idem:rebuild \
    {sale:s1}:reservations:rebuild {sale:s1}:holds {sale:s1}:holds:rebuild \
    1732623456.123456 2000 1 0 0 1200 0 800 2 0 0
]]

if redis.call('HGET', KEYS[1], 'suspended') ~= ARGV[1] then
  return redis.error_reply('STALE the sale is not suspended by this token any more')
end

local function swap_in(staged, live)
  if redis.call('EXISTS', staged) == 1 then
    redis.call('RENAME', staged, live)
  else
    redis.call('DEL', live)
  end
end
for i = 3, 5 do
  swap_in(KEYS[i + 3], KEYS[i])
end
swap_in(KEYS[10], KEYS[9])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1],
  'initial', ARGV[2], 'limit', ARGV[3], 'starts_at_ms', ARGV[4], 'ends_at_ms', ARGV[5],
  'reserved', ARGV[6], 'released', ARGV[7], 'epoch', ARGV[9], 'seq', 0,
  'hold_ms', ARGV[10], 'max_hold_ms', ARGV[11])
redis.call('SET', KEYS[2], ARGV[8])
return 1
