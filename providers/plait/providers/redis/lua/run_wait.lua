-- run_wait.lua: park a started wait or sleep (fenced by the token): its stream entry is
-- acknowledged and its running slot freed, so the run holds nothing while it waits; the
-- timeout (or wake-up time) goes to the delayed set, where the tick finds it (see the waits
-- section of run_lib.lua). A wait whose signal came first takes it at once.
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] entry id
-- ARGV[6] kind ('signal' | 'sleep')  ARGV[7] due in ms from now (-1: none)
-- ARGV[8] due at, Redis ms (0: none; wins over ARGV[7])  ARGV[9] '1': a timeout continues
-- ARGV[10] call id (the same on every resend of this call)
-- returns {'parked', run status, due ms or -1} | {'ok', run status} (it went on at once: a
--   kept signal, a due time already past, or the run was compensating) | {'stale', ''}
--   (superseded, nothing recorded). The call is recorded in <job>|ci ("call|parked"): made
--   again, it gets {'parked', status, -1}. A record that does not parse fails the run
--   ({'ok', 'FAILED'}); when that needs a key on another node now: error TRYAGAIN.
local base = ARGV[1]
local run_id = ARGV[2]
local job = ARGV[3]
local tok = ARGV[4]
local entry = ARGV[5]
local kind = ARGV[6]
local delay = tonumber(ARGV[7])
local due_at = tonumber(ARGV[8])
local goes_on = ARGV[9]
local call = ARGV[10]

local c = ctx(base, run_id, RUN)
local st = check(c, job, tok)
if redis.call('HGET', c.r, job .. '|ci') == call .. '|parked' then
  return {'parked', redis.call('HGET', c.r, 'status'), -1}
end
if st ~= 'running' and st ~= 'cancelling' then
  ack(c, entry)
  check(c, job, tok, true)  -- count the refused write
  return {'stale', ''}
end
local halt = ready(c, job)
if halt == 'moving' then return redis.error_reply(MOVING) end
ack(c, entry)
if halt then return {'ok', 'FAILED'} end
local now = now_ms()
release(c, job)
redis.call('HSET', c.r, job .. '|ci', call .. '|parked')
if st == 'cancelling' then  -- the run began compensating while the wait started
  redis.call('HSET', c.r, job .. '|st', 'cancelled', job .. '|t1', now)
  settle(c, now)
  return {'ok', redis.call('HGET', c.r, 'status')}
end
redis.call('HSET', c.r, job .. '|st', 'parked', job .. '|wk', kind, job .. '|w0', now,
  job .. '|ws', 'waiting', job .. '|wc', goes_on)
local kept = redis.call('HGET', c.r, job .. '|sd')
if kind == 'signal' and kept then
  unpark(c, job, kept, 'signalled', now, redis.call('HGET', c.r, job .. '|sg') or '')
  return {'ok', redis.call('HGET', c.r, 'status')}
end
local due = nil
if due_at > 0 then due = due_at elseif delay >= 0 then due = now + delay end
if due and due <= now and kind == 'sleep' then
  unpark(c, job, 'null', 'woke', now, '')
  return {'ok', redis.call('HGET', c.r, 'status')}
end
if due then
  redis.call('HSET', c.r, job .. '|wd', due)
  later(c.base, due, c.run .. '|' .. job .. '|' .. tok)
end
event(c, 'wait.waiting', job, redis.call('HGET', c.r, job .. '|at'), due or '')
return {'parked', redis.call('HGET', c.r, 'status'), due or -1}
