-- event_fail.lua: schedule the retry of a failed delivery; the entry stays pending in the group.
-- KEYS[1] stream
-- ARGV[1] base  ARGV[2] group  ARGV[3] consumer  ARGV[4] entry id  ARGV[5] attempt that failed
-- ARGV[6] retry delay ms
-- returns the retry's due ms, or 0 when the entry is no longer held by this consumer
local stream = KEYS[1]
local base = ARGV[1]
local group = ARGV[2]
local consumer = ARGV[3]
local id = ARGV[4]
local attempt = ARGV[5]
local delay = tonumber(ARGV[6])

if holder(stream, group, id) ~= consumer then return 0 end
redis.call('HSET', base .. 'attempts:' .. group, id, attempt)
local due = now_ms() + delay
redis.call('ZADD', base .. 'retry:' .. group, due, id)
return due
