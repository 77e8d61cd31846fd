-- event_fail.lua: schedule the retry of a failed delivery; the entry stays pending in the group.
-- KEYS[1] stream  KEYS[2] retry:<group>  KEYS[3] attempts:<group>
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] entry id  ARGV[4] attempt that failed
-- ARGV[5] retry delay ms
-- returns the retry's due ms, or 0 when the entry is no longer held by this consumer
local stream = KEYS[1]
local retry_key = KEYS[2]
local attempts_key = KEYS[3]
local group = ARGV[1]
local consumer = ARGV[2]
local id = ARGV[3]
local attempt = ARGV[4]
local delay = tonumber(ARGV[5])

if holder(stream, group, id) ~= consumer then return 0 end
redis.call('HSET', attempts_key, id, attempt)
local due = now_ms() + delay
redis.call('ZADD', retry_key, due, id)
return due
