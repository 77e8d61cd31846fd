-- run_start_many.lua: mark the attempts of a batch of stream entries running, in one call
-- (the entries one read returned). Each reply is what run_start.lua returns for that entry.
-- KEYS[1..10] the workflow's keys (run_lib.lua), then 4 per entry: run hash, its results, its
-- events, the job's rate-limit zset
-- ARGV[1] base  ARGV[2] owner  ARGV[3] call id (the same on every resend of this call)
-- ARGV[4..] 4 per entry: run id, job, token, entry id
-- returns {reply of entry 1, reply of entry 2, ...}
local base = ARGV[1]
local owner = ARGV[2]
local call = ARGV[3]

local out = {}
for i = 4, #ARGV, 4 do
  local run_id, job, tok, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  out[#out + 1] = start(ctx(base, run_id, RUN + (i - 4)), job, tok, entry, owner, call)
end
return out
