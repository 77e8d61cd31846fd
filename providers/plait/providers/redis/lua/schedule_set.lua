-- schedule_set.lua: create, change, pause, resume or delete a schedule, if it is as the caller
-- read it (a change made in between makes the caller read again).
-- KEYS[1] due zset  KEYS[2] specs hash  KEYS[3] state hash  (one kind's, one hash tag)
-- ARGV[1] schedule id  ARGV[2] spec JSON ('' deletes the schedule and its state)
-- ARGV[3] next due ms (-1: none, the schedule is paused)
-- ARGV[4] the spec JSON the caller read ('' when it found none, '*' for any)
-- returns 1 when the schedule existed before, 0 when it did not, -1 when its spec was not the
-- one the caller read (nothing written)
local id = ARGV[1]
local old = redis.call('HGET', KEYS[2], id)
if ARGV[4] ~= '*' and (old or '') ~= ARGV[4] then return -1 end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[1], id)
  return old and 1 or 0
end
redis.call('HSET', KEYS[2], id, ARGV[2])
if tonumber(ARGV[3]) >= 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], id)
else
  redis.call('ZREM', KEYS[1], id)
end
return old and 1 or 0
