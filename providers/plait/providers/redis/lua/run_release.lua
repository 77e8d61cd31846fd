-- run_release.lua: hand a job this worker holds back to the consumer group, without spending
-- an attempt: the entry is acknowledged and the job queued again under a new token (at once,
-- or after `delay` through the delayed set), so another instance takes it now instead of
-- reclaiming it as lost after the stall timeout. A graceful stop releases what it took but did
-- not start and the attempts it interrupted; a step of a compensating run that was interrupted
-- counts as cancelled (its run goes on compensating), never as failed.
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] entry id  ARGV[6] owner
-- ARGV[7] delay ms (0: queued again at once)  ARGV[8] '1': an attempt this owner marked
--   running may be released; '0': only a job still queued (an entry read and never started)
-- ARGV[9] grace ms, only when this consumer has no handler for the job (put back, not handed
--   back): unless a live instance announces the job (CONSUMERS), the job is put back only
--   while it waits for one for less than `grace` since the first such put-back (<job>|nc),
--   after a longer backoff: 10 x `delay`, plus half the time it waited so far (at most 4 s)
-- returns {'released', due ms} | {'noop'} (no handler anywhere for a hook or rollback the run
--   did not record: the caller runs it as a no-op) | {'dead', ms waited} (nothing released:
--   the caller dead-letters the entry and fails the job) | {'stale'} (the token was superseded, the attempt is another
--   instance's, or the job is not live: nothing changed but the entry's acknowledgement; the
--   same call made again after its reply was lost finds its new token and answers 'stale')
local base = ARGV[1]
local run_id = ARGV[2]
local job = ARGV[3]
local tok = ARGV[4]
local entry = ARGV[5]
local owner = ARGV[6]
local delay = tonumber(ARGV[7] or '0') or 0
local started = ARGV[8] == '1'
local grace = tonumber(ARGV[9] or '')

local c = ctx(base, run_id, RUN)
local v = redis.call('HMGET', c.r, job .. '|tk', job .. '|st', job .. '|en', job .. '|ow',
  job .. '|at')
local st = v[2]
if v[1] ~= tok or not (st == 'queued' or st == 'running' or st == 'cancelling') then
  ack(c, entry)
  return {'stale'}
end
if st == 'queued' and v[3] ~= entry then
  ack(c, entry)  -- an older copy of the job's entry: the live one is queued already
  return {'stale'}
end
if st ~= 'queued' and (v[4] ~= owner or not started) then return {'stale'} end
local now = now_ms()

-- Whether the run recorded that `job` exists (a step of its plan always does).
local function recorded()
  if string.sub(job, 1, 1) ~= '~' then return true end
  local cp = caps(c)
  local step = string.match(job, '^~rb:(.*)$')
  if step then
    return (cp and cp.rb[step]) or redis.call('HGET', c.r, step .. '|rb') == '1'
  end
  if job == '~complete' then return cp and cp.oc end
  return cp and cp.oe
end

if grace then
  if announced(job, now) then
    redis.call('HDEL', c.r, job .. '|nc')
    -- Meant for another instance, which may be parked (intake.py): the push that queues the job
    -- again must wake the parked ones, as push() does once an instance set 'idle'. Else this
    -- instance, awake and reading, takes every copy again and the one that can run it sleeps.
    redis.call('HSET', STATS, 'idle', '1')
  elseif not recorded() then
    return {'noop'}
  else
    local since = tonumber(redis.call('HGET', c.r, job .. '|nc') or '')
    if not since then
      since = now
      redis.call('HSET', c.r, job .. '|nc', now)
    end
    redis.call('HSET', STATS, 'wait:' .. job, now)
    if now - since >= grace then return {'dead', now - since} end
    -- Nobody can take it now: back off, 10 x `delay` at first, up to 4 s more as it waits.
    delay = delay * 10 + math.min(math.floor((now - since) / 2), 4000)
  end
end
if st == 'cancelling' then
  -- Its run is compensating: the interrupted attempt is cancelled, and compensation goes on.
  local halt = ready(c, job)
  if halt == 'moving' then return redis.error_reply(MOVING) end
  ack(c, entry)
  if halt then return {'stale'} end
  release(c, job)
  redis.call('HSET', c.r, job .. '|st', 'cancelled', job .. '|t1', now)
  event(c, 'step.released', job, v[5], '')
  settle(c, now)
  return {'released', now}
end
ack(c, entry)
if st == 'running' then
  release(c, job)
  event(c, 'step.released', job, v[5], '')
end
local next_tok = redis.call('HINCRBY', c.r, 'tok', 1)
if delay <= 0 then
  push(c, job, next_tok)
  return {'released', now}
end
redis.call('HSET', c.r, job .. '|st', 'retrying', job .. '|tk', next_tok)
later(c.base, now + delay, c.run .. '|' .. job .. '|' .. next_tok)
return {'released', now + delay}
