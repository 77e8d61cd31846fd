-- run_retry.lua: resume a FAILED or TIMED_OUT run as a new attempt of the same run.
-- Completed steps whose rollback never ran keep their results and are not run again; every
-- other step runs again, from the earliest group holding one. Hooks and rollbacks start over.
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events
-- ARGV[1] base  ARGV[2] run id  ARGV[3] call id (the same on every resend of this call)
-- returns {'resumed', status} | {'invalid', status} (also when its record does not parse)
--       | {'unknown', ''}
--   (the call that resumed the run is recorded as rcall: made again, it gets 'resumed')
local base = ARGV[1]
local run_id = ARGV[2]
local call = ARGV[3]

local c = ctx(base, run_id, RUN)
local status = redis.call('HGET', c.r, 'status')
if not status then return {'unknown', ''} end
if redis.call('HGET', c.r, 'rcall') == call then return {'resumed', status} end
if status ~= 'FAILED' and status ~= 'TIMED_OUT' then return {'invalid', status} end
if sound(c) then return {'invalid', status} end
if c.idem and not here(base, c.idem) then return redis.error_reply(MOVING) end
local now = now_ms()
local FIELDS = {'st', 'at', 'tk', 'en', 'ow', 'ci', 't0', 't1', 'er', 'nc',
  'wk', 'ws', 'w0', 'wd', 'wc'}  -- the last five: a wait's (run_lib.lua)
local function wipe(job)
  for _, f in ipairs(FIELDS) do redis.call('HDEL', c.r, job .. '|' .. f) end
  -- a signal kept for a wait the run never reached is kept for the new attempt
  if redis.call('HEXISTS', c.r, job .. '|sd') == 0 then
    redis.call('HDEL', c.r, job .. '|sg', job .. '|s0')
  end
end
local function kept(step)
  return redis.call('HGET', c.r, step .. '|st') == 'done'
    and redis.call('HEXISTS', c.r, '~rb:' .. step .. '|st') == 0
end
local jobs = {}
local first = nil
for gi, group in ipairs(c.plan) do
  for _, step in ipairs(group) do
    if kept(step) then
      jobs[#jobs + 1] = step
    else
      first = first or gi
      wipe(step)
      redis.call('HDEL', c.res, step)
    end
  end
end
for _, job in ipairs(split(redis.call('HGET', c.r, 'jobs'))) do
  if string.sub(job, 1, 1) == '~' then wipe(job) end
end
local order = {}
for _, step in ipairs(split(redis.call('HGET', c.r, 'order'))) do
  if redis.call('HGET', c.r, step .. '|st') == 'done' then order[#order + 1] = step end
end
redis.call('HDEL', c.r, 'err', 'reason', 'finished', 'result')
redis.call('HSET', c.r, 'status', 'RUNNING', 'rcall', call, 'jobs', table.concat(jobs, ','),
  'order', table.concat(order, ','), 'comp', '', 'rbact', '', 'infl', 0,
  'gi', (first or (#c.plan + 1)) - 1)
redis.call('ZREM', STATUS, status_member(c, status, redis.call('HGET', c.r, 'created')))
for _, key in ipairs({c.r, c.res, c.ev}) do redis.call('PERSIST', key) end
if c.idem then redis.call('PERSIST', c.idem) end
redis.call('ZADD', ACTIVE, now, c.run)
local timeout = tonumber(redis.call('HGET', c.r, 'tmo') or '') or 0
if timeout > 0 then set_deadline(c, now + timeout) end
event(c, 'run.resumed', '', '', status)
advance(c, now)
return {'resumed', redis.call('HGET', c.r, 'status')}
