-- run_cancel.lua: cancel a live run: stop its running steps and compensate completed ones.
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events
-- ARGV[1] base  ARGV[2] run id  ARGV[3] call id (the same on every resend of this call)
-- returns {1, status} cancelled (FAILED: its record did not parse, see spoil() in run_lib.lua)
--       | {0, status} already ended or compensating | {-1, ''} unknown
--   (the call that cancelled the run is recorded as ccall: made again, it gets 1)
local base = ARGV[1]
local run_id = ARGV[2]
local call = ARGV[3]

local c = ctx(base, run_id, RUN)
local status = redis.call('HGET', c.r, 'status')
if not status then return {-1, ''} end
if redis.call('HGET', c.r, 'ccall') == call then return {1, status} end
if status ~= 'PENDING' and status ~= 'RUNNING' then return {0, status} end
local halt = ready(c, '')
if halt == 'moving' then return redis.error_reply(MOVING) end
if halt or compensate(c, 'cancel', '', now_ms()) then
  redis.call('HSET', c.r, 'ccall', call)
  return {1, redis.call('HGET', c.r, 'status')}
end
return {0, status}
