-- run_start.lua: a worker took a job's stream entry: mark the attempt running.
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events  KEYS[14] the job's rate-limit zset
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] entry id  ARGV[6] owner
-- ARGV[7] call id (the same on every resend of this call)
-- returns {'run', attempt, input, meta, deadline ms or '', progress or '', last error or '',
--          Redis now ms (the deadline's clock), the run's step options or '', step, result, ...}
--       | {'lost', attempt, previous owner}  (entry reclaimed from an attempt that was running;
--         the same call made again gets 'run' for the attempt it started)
--       | {'stale'}  (superseded token, or a corrupt run; the entry is acknowledged)
--       | {'later'}  (the run's slot is moving; the entry is left pending)
--       | {'foreign', reason}  (no such run, or its key holds another type; nothing written)
--       | {'wait', due ms}  (a global limit put the job aside; the entry is acknowledged)
--       | {'later'}  (nothing done; the entry stays pending, see start() in run_lib.lua)
local base = ARGV[1]
local run_id = ARGV[2]
local job = ARGV[3]
local tok = ARGV[4]
local entry = ARGV[5]
local owner = ARGV[6]
local call = ARGV[7]

return start(ctx(base, run_id, RUN), job, tok, entry, owner, call)
