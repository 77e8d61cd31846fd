-- event_reclaim.lua: take over the entries of consumers that stalled past the stall timeout.
-- A lost delivery counts as an attempt; an entry out of attempts is dead-lettered. Entries
-- waiting in the retry backoff are idle on purpose and are left to event_claim.lua.
-- KEYS[1] stream
-- ARGV[1] base  ARGV[2] group  ARGV[3] consumer  ARGV[4] min idle ms  ARGV[5] scan cursor
-- ARGV[6] at most this many entries  ARGV[7] max attempts  ARGV[8] dead-letter cap
-- returns {next cursor, {{entry id, attempt, fields}, ...}, entries dead-lettered}
local base, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local rkey, akey = base .. 'retry:' .. group, base .. 'attempts:' .. group
local r = redis.call('XAUTOCLAIM', KEYS[1], group, consumer, ARGV[4], ARGV[5], 'COUNT', ARGV[6])
local out, dead = {}, 0
for _, entry in ipairs(r[2]) do
  local id, fields = entry[1], entry[2]
  if type(fields) == 'table' and not redis.call('ZSCORE', rkey, id) then
    local lost = redis.call('HINCRBY', akey, id, 1)
    if lost >= tonumber(ARGV[7]) then
      local err = cjson.encode({type = 'plait.WorkerLost',
        message = 'the consumer handling it stalled for longer than the stall timeout'})
      bury(base, KEYS[1], group, id, 'attempts exhausted', err, flat_to_json(fields), lost, ARGV[8])
      dead = dead + 1
    else
      out[#out + 1] = {id, lost + 1, fields}
    end
  end
end
return {r[1], out, dead}
