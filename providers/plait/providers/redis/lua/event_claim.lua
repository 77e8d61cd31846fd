-- event_claim.lua: take over a group's entries whose retry backoff is over.
-- KEYS[1] stream
-- ARGV[1] base  ARGV[2] group  ARGV[3] consumer  ARGV[4] at most this many entries
-- returns {next retry due ms or -1, server now ms, {{entry id, attempt, fields}, ...}}
local stream = KEYS[1]
local base = ARGV[1]
local group = ARGV[2]
local consumer = ARGV[3]
local limit = tonumber(ARGV[4])

local retry_key = base .. 'retry:' .. group
local attempts_key = base .. 'attempts:' .. group
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', retry_key, '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', retry_key, id)
  local claimed = redis.call('XCLAIM', stream, group, consumer, 0, id)
  local entry = claimed[1]
  if type(entry) == 'table' and type(entry[2]) == 'table' then
    local failed = tonumber(redis.call('HGET', attempts_key, id) or '0')
    out[#out + 1] = {id, failed + 1, entry[2]}
  end
end
return {next_due(retry_key), now, out}
