-- run_fail.lua: record a failed attempt; retry it later or fail the job (fenced by the token).
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] entry id ('' for none)
-- ARGV[6] error JSON  ARGV[7] retry delay ms (-1: no further attempt)
-- ARGV[8] call id (the same on every resend of this call)
-- returns {'retry', next attempt, due ms} | {'failed', run status, ''} | {'stale'}
--   (a run whose record does not parse is failed: {'failed', 'FAILED', ''}; when that needs a
--   key on another node now, nothing is written: error TRYAGAIN)
-- The outcome is recorded in the run hash, field <job>|o<token> = "call|reply|...": the same
-- call made again (its reply was lost) gets that reply instead of a stale one.
local base = ARGV[1]
local run_id = ARGV[2]
local job = ARGV[3]
local tok = ARGV[4]
local entry = ARGV[5]
local err = ARGV[6]
local delay = tonumber(ARGV[7])
local call = ARGV[8]

local c = ctx(base, run_id, RUN)
local outcome = job .. '|o' .. tok
local st = check(c, job, tok)
if st ~= 'running' and st ~= 'cancelling' then
  ack(c, entry)
  local done = redis.call('HGET', c.r, outcome)
  if done and string.sub(done, 1, #call + 1) == call .. '|' then
    local kind, a, b = string.match(string.sub(done, #call + 2), '^([^|]*)|([^|]*)|(.*)$')
    return {kind, a, b}
  end
  check(c, job, tok, true)  -- count the refused write
  return {'stale'}
end

-- The run failed the job for good: record the reply.
local function failed()
  local status = redis.call('HGET', c.r, 'status')
  redis.call('HSET', c.r, outcome, call .. '|failed|' .. status .. '|')
  return {'failed', status, ''}
end

local at = tonumber(redis.call('HGET', c.r, job .. '|at') or '')
local halt = ready(c, job, not at and job .. '|at' or nil)
if halt == 'moving' then return redis.error_reply(MOVING) end
ack(c, entry)
if halt then return failed() end  -- the record did not parse: the run was failed
local now = now_ms()
release(c, job)
redis.call('HSET', c.r, job .. '|er', err, job .. '|t1', now)
if st == 'cancelling' then
  redis.call('HSET', c.r, job .. '|st', 'cancelled')
  event(c, 'step.failed', job, at, err)
  settle(c, now)
  return failed()
end
if delay >= 0 then
  local next_tok = redis.call('HINCRBY', c.r, 'tok', 1)
  local due = now + delay
  redis.call('HSET', c.r, job .. '|st', 'retrying', job .. '|tk', next_tok, job .. '|at', at + 1,
    outcome, call .. '|retry|' .. (at + 1) .. '|' .. due)
  later(c.base, due, c.run .. '|' .. job .. '|' .. next_tok)
  event(c, 'step.retrying', job, at, err)
  return {'retry', at + 1, due}
end
redis.call('HSET', c.r, job .. '|st', 'failed')
event(c, 'step.failed', job, at, err)
if string.sub(job, 1, 1) ~= '~' or job == '~complete' then
  compensate(c, 'failed', err, now)
elseif job == '~error' then
  finalize(c, FINAL[redis.call('HGET', c.r, 'reason')] or 'FAILED', now)
else
  redis.call('HSET', c.r, 'rbact', '')
  comp_next(c, now)
end
return failed()
