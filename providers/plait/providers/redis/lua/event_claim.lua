-- event_claim.lua: take over a group's entries whose retry backoff is over.
-- KEYS[1] stream  KEYS[2] retry:<group>  KEYS[3] attempts:<group>
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] at most this many entries
-- returns {next retry due ms or -1, server now ms, {{entry id, attempt, fields}, ...}}
--   (an attempt count that does not parse counts as none)
local stream = KEYS[1]
local retry_key = KEYS[2]
local attempts_key = KEYS[3]
local group = ARGV[1]
local consumer = ARGV[2]
local limit = tonumber(ARGV[3])

local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', retry_key, '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, id in ipairs(ids) do
  local failed = tonumber(redis.call('HGET', attempts_key, id) or '') or 0
  redis.call('ZREM', retry_key, id)
  local claimed = redis.call('XCLAIM', stream, group, consumer, 0, id)
  local entry = claimed[1]
  if type(entry) == 'table' and type(entry[2]) == 'table' then
    out[#out + 1] = {id, failed + 1, entry[2]}
  end
end
return {next_due(retry_key), now, out}
