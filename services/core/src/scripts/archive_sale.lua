--[[
archive_sale.lua: remove every Redis key of one archived sale, in one atomic step
(`yoink sale archive --yes`, after PostgreSQL recorded `archived_at`).

Every key is the sale's own and carries its hash tag `{sale:ID}`, so the script runs on
one Redis Cluster slot. UNLINK frees large values (the reservation records, the stream)
in the background: Redis is not held up by a sale of a million reservations.

KEYS[1..n]  every key `keys.rs` names for the sale: meta, stock, buyers, idem,
            reservations, events, holds, dead, dead:replays and the `:rebuild` copies

ARGV        none

Returns  the number of keys that existed and were removed (0 when already gone).
Errors   none: a key that does not exist is skipped.

The sale registry (`yoink:sales`) is global, in no sale's slot: the caller removes the
sale from it with its own SREM.

Example:
  EVALSHA <sha> 3 {sale:s1}:meta {sale:s1}:stock {sale:s1}:events
]]

local removed = 0
for _, key in ipairs(KEYS) do
  removed = removed + redis.call('UNLINK', key)
end
return removed
