--[[
reconcile_snapshot.lua: read everything the reconciler needs from one sale's Redis
state in ONE atomic, read-only step, so that stock, counters and the group's position
are taken at the same instant.

KEYS[1]  meta    hash    initial, limit, reserved, released, epoch, seq, suspended, ...
KEYS[2]  stock   string  units on sale now
KEYS[3]  events  stream  the sale's events
KEYS[4]  dead    stream  dead letters

ARGV[1]  consumer group name (`projectors`)

Returns  {meta_exists, initial, remaining, reserved, released, stream_length,
          dead_letters, group_exists, pending, lag (-1 = unknown), last_delivered_id,
          last_entry_id, epoch, seq, suspended (1/0), pending_id_1, pending_id_2, ...}
         Missing keys read as 0 / "0-0"; a sale from before positions is in epoch 1.
         The entries themselves are read afterwards with XRANGE bounded by
         last_entry_id: entries never change once written.

Example:
  EVALSHA <sha> 4 {sale:s1}:meta {sale:s1}:stock {sale:s1}:events {sale:s1}:dead projectors
]]

local meta = redis.call('HMGET', KEYS[1], 'initial', 'reserved', 'released', 'epoch', 'seq', 'suspended')
local meta_exists = meta[1] and 1 or 0
local epoch = tonumber(meta[4]) or (meta[1] and 1 or 0)
local remaining = tonumber(redis.call('GET', KEYS[2]) or '0')
local stream_exists = redis.call('EXISTS', KEYS[3]) == 1
local length = redis.call('XLEN', KEYS[3])
local dead = redis.call('XLEN', KEYS[4])

local last_entry = '0-0'
local group_exists, pending, lag, last_delivered = 0, 0, -1, '0-0'
if stream_exists then
  local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  if newest[1] then
    last_entry = newest[1][1]
  end
  -- XINFO GROUPS answers a flat list of name/value pairs per group.
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[3])) do
    local fields = {}
    for i = 1, #group, 2 do
      fields[group[i]] = group[i + 1]
    end
    if fields['name'] == ARGV[1] then
      group_exists = 1
      pending = fields['pending']
      last_delivered = fields['last-delivered-id']
      if type(fields['lag']) == 'number' then
        lag = fields['lag']
      end
    end
  end
end

local reply = {meta_exists, tonumber(meta[1] or '0'), remaining, tonumber(meta[2] or '0'),
               tonumber(meta[3] or '0'), length, dead, group_exists, pending, lag,
               last_delivered, last_entry, epoch, tonumber(meta[5] or '0'),
               meta[6] and 1 or 0}
if pending > 0 then
  for _, p in ipairs(redis.call('XPENDING', KEYS[3], ARGV[1], '-', '+', pending)) do
    reply[#reply + 1] = p[1]
  end
end
return reply
