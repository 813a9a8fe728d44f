--[[
fence.lua: compare a sale's position in Redis with a floor someone outside Redis knows
(PostgreSQL's high-water mark, an API instance's memory), and suspend the sale when
Redis is below it: Redis then went back in time (restart from an old snapshot, restore,
failover to a lagging replica, FLUSHALL) and would sell units PostgreSQL already sold.
Suspending is atomic with the comparison, so no buy slips between the two.

KEYS[1]  meta    hash    epoch, seq, initial, suspended, suspended_reason

ARGV[1]  floor epoch      ARGV[2]  floor seq
ARGV[3]  who is asking, for the reason recorded with a suspension ("projector", ...)
ARGV[4]  "force" to suspend whatever the position (a repair); "" otherwise

Returns  {state, epoch, seq, token, reason}
         state "live":           Redis is at or above the floor; nothing written
         state "suspended":      the sale was already suspended; nothing written
         state "suspended_now":  Redis was below the floor (or "force"); this call
                                 suspended the sale: HSET meta suspended <token>,
                                 suspended_reason <reason>
         (epoch, seq) is Redis's position (0, 0 when Redis has no such sale); token
         identifies the suspension (Redis TIME "sec.usec"), so a rebuild can swap its
         state in only if the sale is still suspended by the same event; "" when live.

A sale Redis does not hold at all is at position 0.0: with a floor above that (the
sale had Redis state once) it is suspended too, which creates `meta` with only the
suspension fields until the rebuild.

Example:
  EVALSHA <sha> 1 {sale:s1}:meta 1 1200 projector ""
]]

local meta = KEYS[1]
local floor_epoch, floor_seq = tonumber(ARGV[1]) or 0, tonumber(ARGV[2]) or 0
local who, force = ARGV[3], ARGV[4] == 'force'

local m = redis.call('HMGET', meta, 'epoch', 'seq', 'initial', 'suspended', 'suspended_reason')
local epoch = tonumber(m[1]) or (m[3] and 1 or 0)
local seq = tonumber(m[2]) or 0
if m[4] then
  return {'suspended', epoch, seq, m[4], m[5] or ''}
end
local behind = epoch < floor_epoch or (epoch == floor_epoch and seq < floor_seq)
if not behind and not force then
  return {'live', epoch, seq, '', ''}
end

local now = redis.call('TIME')
-- Seconds.microseconds (TIME does not zero-pad the microseconds).
local token = string.format('%d.%06d', now[1], now[2])
local reason
if force then
  reason = who .. ': suspended for a rebuild from PostgreSQL'
else
  reason = who .. ': Redis at ' .. epoch .. '.' .. seq .. ' is below the floor ' ..
    floor_epoch .. '.' .. floor_seq
end
redis.call('HSET', meta, 'suspended', token, 'suspended_reason', reason)
return {'suspended_now', epoch, seq, token, reason}
