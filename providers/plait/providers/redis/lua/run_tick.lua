-- run_tick.lua: promote due retries to the job stream and time out runs past their deadline.
-- KEYS[1] delayed zset (members "run|job|token", scores due ms)
-- ARGV[1] base  ARGV[2] most items of each kind handled by this call
-- returns {retries promoted, runs timed out, next due ms (-1: none), server now ms}
local base, limit = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local promoted, expired = 0, 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', KEYS[1], member)
  local run, job, tok = string.match(member, '^(.*)|([^|]*)|([^|]*)$')
  if run then
    local c = ctx(base, run)
    local v = redis.call('HMGET', c.r, job .. '|tk', job .. '|st')
    if v[1] == tok and v[2] == 'retrying' then
      push(c, job, tok)
      promoted = promoted + 1
    end
  end
end
local deadlines = base .. 'deadlines'
for _, run in ipairs(redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', deadlines, run)
  if compensate(ctx(base, run), 'timeout', '', now) then expired = expired + 1 end
end
local next_due = -1
local a = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local b = redis.call('ZRANGE', deadlines, 0, 0, 'WITHSCORES')
if a[2] then next_due = tonumber(a[2]) end
if b[2] and (next_due < 0 or tonumber(b[2]) < next_due) then next_due = tonumber(b[2]) end
return {promoted, expired, next_due, now}
