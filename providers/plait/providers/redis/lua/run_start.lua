-- run_start.lua: a worker took a job's stream entry: mark the attempt running.
-- KEYS[1] run hash
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] entry id  ARGV[6] owner
-- returns {'run', attempt, input, meta, deadline ms or '', progress or '', last error or '',
--          step, result, ...}
--       | {'lost', attempt, previous owner}  (entry reclaimed from an attempt that was running)
--       | {'stale'}  (superseded token or unknown run; the entry is acknowledged)
--       | {'wait', due ms}  (a global limit put the job aside; the entry is acknowledged)
local c = ctx(ARGV[1], ARGV[2])
local job, tok, entry = ARGV[3], ARGV[4], ARGV[5]
local st, status = check(c, job, tok)

-- Put the job aside until `due` in `set` (waiting: until a running slot frees up).
local function defer(set, due)
  ack(c, entry)
  redis.call('HSET', c.r, job .. '|st', 'waiting')
  redis.call('ZADD', c.base .. set, due, c.run .. '|' .. job .. '|' .. tok)
  return {'wait', due}
end

if st == 'queued' then
  local now = now_ms()
  local lim = redis.call('HGET', c.r, 'lim')
  if lim and lim ~= '' then
    lim = cjson.decode(lim)
    local rate = lim.rl and lim.rl[job]
    local starts = c.base .. 'rate:' .. job
    if rate then
      redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - rate[2])
      if redis.call('ZCARD', starts) >= rate[1] then
        local first = redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')
        return defer('delayed', tonumber(first[2]) + rate[2])
      end
    end
    if lim.cc then
      if redis.call('ZCARD', c.base .. 'running') >= lim.cc then return defer('waiting', now) end
      redis.call('ZADD', c.base .. 'running', now, c.run .. '|' .. job)
    end
    if rate then
      redis.call('ZADD', starts, now, c.run .. '|' .. job .. '|' .. tok)
      redis.call('PEXPIRE', starts, rate[2])
    end
  end
  local at = redis.call('HGET', c.r, job .. '|at')
  redis.call('HSET', c.r, job .. '|st', 'running', job .. '|ow', ARGV[6], job .. '|t0', now)
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
