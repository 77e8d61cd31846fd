-- schedule_advance.lua: move a schedule past the ticks its caller fired (or skipped), once.
-- Every instance that saw the same due tick fires it with the same idempotency key, so only
-- the first of them moves the schedule on; the others find the due time moved and do nothing.
-- KEYS[1] due zset  KEYS[2] specs hash  KEYS[3] state hash  (one kind's, one hash tag)
-- ARGV[1] schedule id  ARGV[2] the due ms the caller read  ARGV[3] the spec JSON it read
-- ARGV[4] the next due ms  ARGV[5] state JSON to record ('' keeps the state)
-- returns 1 when moved on; 0 when the due time moved (another instance went first, or this is
-- a repeat of a call whose reply was lost) or the schedule was changed, paused or deleted
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not cur or tonumber(cur) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[3] then return 0 end
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[5]) end
return 1
