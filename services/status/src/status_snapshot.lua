#!lua flags=no-writes
--[[
status_snapshot.lua: what `yoink status` shows of one sale's Redis side, read in ONE
atomic step and never written (the `no-writes` flag above makes Redis refuse a write,
and lets the script run on a replica). Bounded work whatever the backlog: every command
here is O(1) or O(log n) in the stream's length and pending list, except XINFO CONSUMERS
(O(consumers), a handful of projectors); the pending list is never walked, only its
oldest entry is read (`XPENDING key group - + 1`).

KEYS[1]  meta    hash    initial, reserved, released, suspended (read with HMGET)
KEYS[2]  stock   string  units on sale now
KEYS[3]  events  stream  the sale's events, with the projectors' group
KEYS[4]  dead    stream  dead letters (fields dead_reason, original_id, consumer, ...)

ARGV[1]  consumer group name (`projectors`)
ARGV[2]  most consumers to list (those with most pending first); all are counted

Returns  one JSON object (cjson; a missing value is an absent key):
  now_ms              Redis TIME, epoch milliseconds
  meta_exists         true when the sale's meta hash exists
  initial, reserved, released          meta fields as Redis stores them (strings)
  suspended           true while buys are suspended (a rebuild is due)
  stock               the stock key as stored (string)
  stream_exists, stream_length
  group               when the group exists: {pending, consumers, last_delivered_id,
                      lag (absent when Redis cannot tell), oldest_pending (absent when
                      nothing is pending: {id, consumer, idle_ms, deliveries}),
                      consumer_list (absent when empty: [{name, pending, idle_ms,
                      inactive_ms (Redis 7.2+ only)}])}
  first_undelivered_id  the oldest entry no consumer was given yet (the first entry
                      of the stream when the group is missing); absent when none
  dead_letters        XLEN of the dead-letter stream
  oldest_dead         when there is one: {id, reason}
No error codes of its own: a key of the wrong type answers Redis's WRONGTYPE error.

Example:
  EVALSHA <sha> 4 {sale:s1}:meta {sale:s1}:stock {sale:s1}:events {sale:s1}:dead projectors 32
]]

-- XINFO answers flat name/value lists.
local function to_map(flat)
  local map = {}
  for i = 1, #flat, 2 do
    map[flat[i]] = flat[i + 1]
  end
  return map
end

local time = redis.call('TIME')
local out = {
  now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000),
  meta_exists = redis.call('EXISTS', KEYS[1]) == 1,
}

-- HMGET answers false for a missing field: such a key is left out of the reply.
local meta = redis.call('HMGET', KEYS[1], 'initial', 'reserved', 'released', 'suspended')
out.initial = meta[1] or nil
out.reserved = meta[2] or nil
out.released = meta[3] or nil
out.suspended = meta[4] and true or false
out.stock = redis.call('GET', KEYS[2]) or nil

out.stream_exists = redis.call('EXISTS', KEYS[3]) == 1
out.stream_length = redis.call('XLEN', KEYS[3])

local group = nil
if out.stream_exists then
  for _, raw in ipairs(redis.call('XINFO', 'GROUPS', KEYS[3])) do
    local fields = to_map(raw)
    if fields['name'] == ARGV[1] then
      group = fields
    end
  end
end

if group then
  local g = {
    pending = group['pending'],
    consumers = group['consumers'],
    last_delivered_id = group['last-delivered-id'],
  }
  -- Redis 7.0 answers a nil lag when it cannot compute it (e.g. after XDEL).
  if type(group['lag']) == 'number' then
    g.lag = group['lag']
  end
  if group['pending'] > 0 then
    local oldest = redis.call('XPENDING', KEYS[3], ARGV[1], '-', '+', 1)[1]
    if oldest then
      g.oldest_pending = {id = oldest[1], consumer = oldest[2], idle_ms = oldest[3],
                          deliveries = oldest[4]}
    end
  end
  local consumers = {}
  for _, raw in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[3], ARGV[1])) do
    local fields = to_map(raw)
    local c = {name = fields['name'], pending = fields['pending'], idle_ms = fields['idle']}
    if type(fields['inactive']) == 'number' then
      c.inactive_ms = fields['inactive']
    end
    consumers[#consumers + 1] = c
  end
  table.sort(consumers, function(a, b)
    if a.pending ~= b.pending then
      return a.pending > b.pending
    end
    return a.name < b.name
  end)
  local most = tonumber(ARGV[2]) or 32
  if #consumers > 0 then
    g.consumer_list = {}
    for i = 1, math.min(#consumers, most) do
      g.consumer_list[i] = consumers[i]
    end
  end
  out.group = g
  -- An exclusive range start fails only on the largest possible id: nothing after it.
  local after = redis.pcall('XRANGE', KEYS[3], '(' .. group['last-delivered-id'], '+', 'COUNT', 1)
  if type(after) == 'table' and after[1] then
    out.first_undelivered_id = after[1][1]
  end
elseif out.stream_exists then
  local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
  if first[1] then
    out.first_undelivered_id = first[1][1]
  end
end

out.dead_letters = redis.call('XLEN', KEYS[4])
if out.dead_letters > 0 then
  local first = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)[1]
  if first then
    out.oldest_dead = {id = first[1], reason = to_map(first[2])['dead_reason'] or ''}
  end
end

return cjson.encode(out)
