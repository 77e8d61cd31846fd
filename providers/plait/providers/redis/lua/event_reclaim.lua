-- event_reclaim.lua: take over the entries of consumers that stalled past the stall timeout.
-- A lost delivery counts as an attempt; an entry out of attempts is dead-lettered. Entries
-- waiting in the retry backoff are idle on purpose and are left to event_claim.lua.
-- KEYS[1] stream
-- ARGV[1] base  ARGV[2] group  ARGV[3] consumer  ARGV[4] min idle ms  ARGV[5] scan cursor
-- ARGV[6] at most this many entries  ARGV[7] max attempts
-- ARGV[8] approximate cap of the dead-letter stream
-- returns {next cursor, {{entry id, attempt, fields}, ...}, entries dead-lettered}
local stream = KEYS[1]
local base = ARGV[1]
local group = ARGV[2]
local consumer = ARGV[3]
local min_idle = ARGV[4]
local cursor = ARGV[5]
local limit = ARGV[6]
local max_attempts = tonumber(ARGV[7])
local dead_cap = ARGV[8]

local retry_key, attempts_key = base .. 'retry:' .. group, base .. 'attempts:' .. group
local r = redis.call('XAUTOCLAIM', stream, group, consumer, min_idle, cursor, 'COUNT', limit)
local out, dead = {}, 0
for _, entry in ipairs(r[2]) do
  local id, fields = entry[1], entry[2]
  if type(fields) == 'table' and not redis.call('ZSCORE', retry_key, id) then
    local lost = redis.call('HINCRBY', attempts_key, id, 1)
    if lost >= max_attempts then
      local err = cjson.encode({type = 'plait.WorkerLost',
        message = 'the consumer handling it stalled for longer than the stall timeout'})
      bury(base, stream, group, id, 'attempts exhausted', err, flat_to_json(fields), lost,
        dead_cap)
      dead = dead + 1
    else
      out[#out + 1] = {id, lost + 1, fields}
    end
  end
end
return {r[1], out, dead}
