-- event_claim.lua: take over a group's entries whose retry backoff is over.
-- KEYS[1] stream
-- ARGV[1] base  ARGV[2] group  ARGV[3] consumer  ARGV[4] at most this many entries
-- returns {next retry due ms or -1, server now ms, {{entry id, attempt, fields}, ...}}
local base, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local rkey = base .. 'retry:' .. group
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', rkey, '-inf', now, 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', rkey, id)
  local claimed = redis.call('XCLAIM', KEYS[1], group, consumer, 0, id)
  local entry = claimed[1]
  if type(entry) == 'table' and type(entry[2]) == 'table' then
    local failed = tonumber(redis.call('HGET', base .. 'attempts:' .. group, id) or '0')
    out[#out + 1] = {id, failed + 1, entry[2]}
  end
end
return {next_due(rkey), now, out}
