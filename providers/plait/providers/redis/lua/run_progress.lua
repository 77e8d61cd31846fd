-- run_progress.lua: save a step's progress checkpoint (fenced by the token).
-- KEYS[1] run hash
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] progress JSON
-- returns 1 saved | 0 refused (the attempt was superseded)
local c = ctx(ARGV[1], ARGV[2])
local job = ARGV[3]
local st = check(c, job, ARGV[4], true)
if st ~= 'running' and st ~= 'cancelling' then return 0 end
redis.call('HSET', c.r, job .. '|pg', ARGV[5])
event(c, 'step.progress', job, redis.call('HGET', c.r, job .. '|at'), ARGV[5])
return 1
