-- run_complete.lua: record a job's success and advance the run (fenced by the token).
-- KEYS[1] run hash
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] entry id
-- ARGV[6] result JSON
-- returns {'ok', run status after the transition} | {'stale'} (superseded: nothing recorded)
local c = ctx(ARGV[1], ARGV[2])
local job, tok, value = ARGV[3], ARGV[4], ARGV[6]
local st = check(c, job, tok, true)
ack(c, ARGV[5])
if st ~= 'running' and st ~= 'cancelling' then return {'stale'} end
local now = now_ms()
release(c, job)
redis.call('HSET', c.r, job .. '|st', 'done', job .. '|t1', now)
event(c, 'step.completed', job, redis.call('HGET', c.r, job .. '|at'), '')
if string.sub(job, 1, 1) ~= '~' then
  redis.call('HSET', c.res, job, value)
  append(c, 'order', job)
  if st == 'cancelling' then
    -- completed after the run began compensating: its rollback runs first
    local comp = redis.call('HGET', c.r, 'comp')
    redis.call('HSET', c.r, 'comp', (comp and comp ~= '') and (job .. ',' .. comp) or job)
    settle(c, now)
  elseif redis.call('HINCRBY', c.r, 'pend', -1) <= 0 then
    advance(c, now)
  end
elseif job == '~complete' then
  if st == 'cancelling' then
    settle(c, now)
  else
    redis.call('HSET', c.r, 'result', value)
    finalize(c, 'COMPLETED', now)
  end
elseif job == '~error' then
  finalize(c, FINAL[redis.call('HGET', c.r, 'reason')], now)
else
  redis.call('HSET', c.r, 'rbact', '')
  comp_next(c, now)
end
return {'ok', redis.call('HGET', c.r, 'status')}
