--[[
trim.lua: removes the entries of a sale's stream that PostgreSQL already has, in one
atomic step (XTRIM MINID): only entries every projector acknowledged (so committed
first), below the oldest pending one and never past the last delivered one, and only
while the sale is live and has no dead letters. Never removes a pending, undelivered or
dead-lettered entry.

KEYS[1]  events  stream  the sale's reservation events
KEYS[2]  dead    stream  the sale's dead letters (their originals stay while any is left)
KEYS[3]  meta    hash    the sale; a `suspended` field means Redis went back behind
                         PostgreSQL (a rebuild reads the stream): nothing is removed
ARGV[1]  group           the projectors' consumer group
ARGV[2]  hwm_epoch       PostgreSQL's high-water mark for the sale (the newest position
ARGV[3]  hwm_seq         it decided): the newest entry removed must not be past it
ARGV[4]  limit           most entries removed by this call (XTRIM MINID ~ ... LIMIT)

Returns {code, removed, detail}:
  {'trimmed', n, minid}   n entries removed (0 when none was old enough); every entry
                          before minid is gone
  {'kept', 0, reason}     nothing removed, because: 'suspended', 'dead_letters',
                          'no_group', 'nothing_acked' (no acknowledged entry before the
                          first one to keep), 'ahead_of_postgres' (an entry to remove
                          carries a position PostgreSQL has not decided: never expected,
                          as entries are acknowledged after their commit)
]]

local events, dead, meta = KEYS[1], KEYS[2], KEYS[3]
local group = ARGV[1]
local hwm_epoch, hwm_seq = tonumber(ARGV[2]), tonumber(ARGV[3])
local limit = tonumber(ARGV[4])

if redis.call('HEXISTS', meta, 'suspended') == 1 then
  return {'kept', 0, 'suspended'}
end
if redis.call('XLEN', dead) > 0 then
  return {'kept', 0, 'dead_letters'}
end
if redis.call('EXISTS', events) == 0 then
  return {'kept', 0, 'no_group'}
end

local last_delivered, pending
for _, g in ipairs(redis.call('XINFO', 'GROUPS', events)) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  if info['name'] == group then
    last_delivered, pending = info['last-delivered-id'], info['pending']
  end
end
if not last_delivered then
  return {'kept', 0, 'no_group'}
end

-- The first entry to keep: the oldest pending one, else the last delivered one (kept
-- so the group's position always names an entry that exists).
local minid = last_delivered
if pending > 0 then
  minid = redis.call('XPENDING', events, group)[2]
end

-- The newest entries that would go: none may be past PostgreSQL's high-water mark.
-- Only `reserved` entries carry a position; a few back are enough to find one.
local before = redis.call('XREVRANGE', events, '(' .. minid, '-', 'COUNT', 10)
if #before == 0 then
  return {'kept', 0, 'nothing_acked'}
end
for _, entry in ipairs(before) do
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  if f['epoch'] and f['seq'] then
    local epoch, seq = tonumber(f['epoch']), tonumber(f['seq'])
    if epoch > hwm_epoch or (epoch == hwm_epoch and seq > hwm_seq) then
      return {'kept', 0, 'ahead_of_postgres'}
    end
    break
  end
end

-- `~` drops whole radix-tree nodes (stream-node-max-entries, 100 by default), the
-- only trimming LIMIT bounds: up to a node's worth of acknowledged entries stays
-- until the next node fills.
local removed = redis.call('XTRIM', events, 'MINID', '~', minid, 'LIMIT', limit)
return {'trimmed', removed, minid}
