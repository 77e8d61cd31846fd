-- event_fail.lua: schedule the retry of a failed delivery; the entry stays pending in the group.
-- KEYS[1] stream
-- ARGV[1] base  ARGV[2] group  ARGV[3] consumer  ARGV[4] entry id  ARGV[5] attempt that failed
-- ARGV[6] retry delay ms
-- returns the retry's due ms, or 0 when the entry is no longer held by this consumer
local base, group, id = ARGV[1], ARGV[2], ARGV[4]
if holder(KEYS[1], group, id) ~= ARGV[3] then return 0 end
redis.call('HSET', base .. 'attempts:' .. group, id, ARGV[5])
local due = now_ms() + tonumber(ARGV[6])
redis.call('ZADD', base .. 'retry:' .. group, due, id)
return due
