-- run_signal.lua: deliver signal `name` to a run: to its parked wait (which completes with the
-- payload as its result, and the run goes on), or kept until the wait is reached. Nothing is
-- written when the signal is refused.
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events
-- ARGV[1] base  ARGV[2] run id  ARGV[3] the signal's (and its wait's) name
-- ARGV[4] signal id (the same on every resend: it is the call id too)  ARGV[5] payload JSON
-- returns {'delivered', status} | {'kept', status} (the wait is not reached yet)
--       | {'duplicate', status} (this signal id was delivered or kept already: nothing done)
--       | {'refused', why} (the run ended or compensates, the wait timed out or was signalled
--         with another id) | {'nowait', ''} (the run has no wait of that name)
--       | {'unknown', ''} (no such run)
local base = ARGV[1]
local run_id = ARGV[2]
local name = ARGV[3]
local sid = ARGV[4]
local data = ARGV[5]

local c = ctx(base, run_id, RUN)
local v = redis.call('HMGET', c.r, 'status', 'sigs', name .. '|st', name .. '|sg', name .. '|ws')
local status = v[1]
if not status then return {'unknown', ''} end
if not string.find(v[2] or '', ',' .. name .. ',', 1, true) then return {'nowait', ''} end
if v[4] == sid then return {'duplicate', status} end
if status ~= 'PENDING' and status ~= 'RUNNING' then return {'refused', status} end
if v[5] == 'timed_out' then return {'refused', 'timed out'} end
if v[4] then return {'refused', 'already signalled'} end
local now = now_ms()
if v[3] == 'parked' then
  local halt = ready(c, name)
  if halt == 'moving' then return redis.error_reply(MOVING) end
  if halt then return {'refused', 'FAILED'} end
  redis.call('HSET', c.r, name .. '|sg', sid)
  unpark(c, name, data, 'signalled', now, sid)
  return {'delivered', redis.call('HGET', c.r, 'status')}
end
if v[3] == 'done' or v[3] == 'failed' or v[3] == 'cancelled' then
  return {'refused', 'the wait is over'}
end
redis.call('HSET', c.r, name .. '|sd', data, name .. '|sg', sid, name .. '|s0', now)
event(c, 'wait.kept', name, '', sid)
return {'kept', status}
