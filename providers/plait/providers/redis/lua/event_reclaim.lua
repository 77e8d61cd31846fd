-- event_reclaim.lua: take over the entries of consumers that stalled past the stall timeout.
-- A lost delivery counts as an attempt; an entry out of attempts is dead-lettered. Entries
-- waiting in the retry backoff are idle on purpose and are left to event_claim.lua.
-- KEYS[1] stream  KEYS[2] dead  KEYS[3] retry:<group>  KEYS[4] attempts:<group>
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] min idle ms  ARGV[4] scan cursor
-- ARGV[5] at most this many entries  ARGV[6] max attempts
-- ARGV[7] approximate cap of the dead-letter stream
-- returns {next cursor, {{entry id, attempt, fields}, ...}, entries dead-lettered}
--   (an attempt count that does not parse counts as none)
local k = {stream = KEYS[1], dead = KEYS[2], retry = KEYS[3], attempts = KEYS[4]}
local group = ARGV[1]
local consumer = ARGV[2]
local min_idle = ARGV[3]
local cursor = ARGV[4]
local limit = ARGV[5]
local max_attempts = tonumber(ARGV[6])
local dead_cap = ARGV[7]

local r = redis.call('XAUTOCLAIM', k.stream, group, consumer, min_idle, cursor, 'COUNT', limit)
local out, dead = {}, 0
for _, entry in ipairs(r[2]) do
  local id, fields = entry[1], entry[2]
  if type(fields) == 'table' and not redis.call('ZSCORE', k.retry, id) then
    local lost = (tonumber(redis.call('HGET', k.attempts, id) or '') or 0) + 1
    redis.call('HSET', k.attempts, id, lost)
    if lost >= max_attempts then
      local err = cjson.encode({type = 'plait.WorkerLost',
        message = 'the consumer handling it stalled for longer than the stall timeout'})
      bury(k, group, id, 'attempts exhausted', err, flat_to_json(fields), lost, dead_cap)
      dead = dead + 1
    else
      out[#out + 1] = {id, lost + 1, fields}
    end
  end
end
return {r[1], out, dead}
