-- run_progress.lua: save a step's progress checkpoint (fenced by the token).
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] progress JSON
-- ARGV[6] call id (the same on every resend of this call)
-- returns 1 saved | 0 refused (the attempt was superseded)
--   (the call that saved is recorded as <job>|pc: made again, it gets 1 and adds no event)
local base = ARGV[1]
local run_id = ARGV[2]
local job = ARGV[3]
local tok = ARGV[4]
local progress = ARGV[5]
local call = ARGV[6]

local c = ctx(base, run_id, RUN)
local st = check(c, job, tok, true)
if st ~= 'running' and st ~= 'cancelling' then return 0 end
if redis.call('HGET', c.r, job .. '|pc') == call then return 1 end
redis.call('HSET', c.r, job .. '|pg', progress, job .. '|pc', call)
event(c, 'step.progress', job, redis.call('HGET', c.r, job .. '|at'), progress)
return 1
