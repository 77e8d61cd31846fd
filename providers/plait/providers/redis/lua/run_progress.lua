-- run_progress.lua: save a step's progress checkpoint (fenced by the token).
-- KEYS[1..9] the workflow's keys (run_lib.lua)  KEYS[10] run hash  KEYS[11] its results
-- KEYS[12] its events
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] progress JSON
-- returns 1 saved | 0 refused (the attempt was superseded)
local base = ARGV[1]
local run_id = ARGV[2]
local job = ARGV[3]
local tok = ARGV[4]
local progress = ARGV[5]

local c = ctx(base, run_id, RUN)
local st = check(c, job, tok, true)
if st ~= 'running' and st ~= 'cancelling' then return 0 end
redis.call('HSET', c.r, job .. '|pg', progress)
event(c, 'step.progress', job, redis.call('HGET', c.r, job .. '|at'), progress)
return 1
