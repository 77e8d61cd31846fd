-- run_start.lua: a worker took a job's stream entry: mark the attempt running.
-- KEYS[1] run hash
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] entry id  ARGV[6] owner
-- returns {'run', attempt, input, meta, deadline ms or '', progress or '', last error or '',
--          step, result, ...}
--       | {'lost', attempt, previous owner}  (entry reclaimed from an attempt that was running)
--       | {'stale'}  (superseded token or unknown run; the entry is acknowledged)
local c = ctx(ARGV[1], ARGV[2])
local job, tok, entry = ARGV[3], ARGV[4], ARGV[5]
local st, status = check(c, job, tok)
if st == 'queued' then
  local at = redis.call('HGET', c.r, job .. '|at')
  redis.call('HSET', c.r, job .. '|st', 'running', job .. '|ow', ARGV[6], job .. '|t0', now_ms())
  if status == 'PENDING' then redis.call('HSET', c.r, 'status', 'RUNNING') end
  event(c, 'step.started', job, at, '')
  local v = redis.call('HMGET', c.r, 'input', 'meta', 'deadline', job .. '|pg', job .. '|er')
  local out = {'run', at, v[1], v[2], v[3] or '', v[4] or '', v[5] or ''}
  local results = redis.call('HGETALL', c.res)
  for i = 1, #results do out[#out + 1] = results[i] end
  return out
end
if st == 'running' or st == 'cancelling' then
  return {'lost', redis.call('HGET', c.r, job .. '|at'), redis.call('HGET', c.r, job .. '|ow') or ''}
end
ack(c, entry)
return {'stale'}
