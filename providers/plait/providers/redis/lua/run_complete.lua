-- run_complete.lua: record a job's success and advance the run (fenced by the token); then
-- take up to `take` new entries of the stream for this worker and start them, so a worker
-- that finishes a step gets its next one (often the step it just enqueued) in the same call.
-- KEYS[1..9] the workflow's keys (run_lib.lua)  KEYS[10] run hash  KEYS[11] its results
-- KEYS[12] its events
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] entry id
-- ARGV[6] result JSON  ARGV[7] owner  ARGV[8] entries to take (0: none)
-- returns {'ok', run status after the transition, taken} | {'stale', '', taken}
--   (stale: superseded, nothing recorded); taken is a list of {entry id, run, job, token,
--   what run_start.lua returns} or {entry id, field, value, ...} for an entry that names no job.
--   Entries are taken only while the slot is settled (their runs are not declared).
local base = ARGV[1]
local run_id = ARGV[2]
local job = ARGV[3]
local tok = ARGV[4]
local entry = ARGV[5]
local result = ARGV[6]
local owner = ARGV[7]
local wanted = tonumber(ARGV[8] or '0')

local c = ctx(base, run_id, RUN)

local function record()
  local st = check(c, job, tok, true)
  if st ~= 'running' and st ~= 'cancelling' then
    ack(c, entry)
    return {'stale'}
  end
  -- Read and check everything first: a step that leaves others of its group pending only
  -- lowers the count; anything else may advance, compensate or finish the run.
  local step = string.sub(job, 1, 1) ~= '~'
  local pend = nil
  if step and st == 'running' then
    pend = redis.call('HGET', c.r, 'pend') or '0'
    pend = string.match(pend, '^%d+$') and tonumber(pend) - 1
  end
  if not pend or pend <= 0 then
    local halt = ready(c, job, step and st == 'running' and not pend and 'pend' or nil)
    if halt == 'moving' then return {'moving'} end
    if halt then
      ack(c, entry)
      return {'ok', 'FAILED'}
    end
  end
  ack(c, entry)
  local now = now_ms()
  release(c, job)
  redis.call('HSET', c.r, job .. '|st', 'done', job .. '|t1', now)
  event(c, 'step.completed', job, redis.call('HGET', c.r, job .. '|at'), '')
  if step then
    redis.call('HSET', c.res, job, result)
    append(c, 'order', job)
    if st == 'cancelling' then
      -- completed after the run began compensating: its rollback runs first
      local comp = redis.call('HGET', c.r, 'comp')
      redis.call('HSET', c.r, 'comp', (comp and comp ~= '') and (job .. ',' .. comp) or job)
      settle(c, now)
    else
      redis.call('HSET', c.r, 'pend', pend)
      if pend <= 0 then advance(c, now) end
    end
  elseif job == '~complete' then
    if st == 'cancelling' then
      settle(c, now)
    else
      redis.call('HSET', c.r, 'result', result)
      finalize(c, 'COMPLETED', now)
    end
  elseif job == '~error' then
    finalize(c, FINAL[redis.call('HGET', c.r, 'reason')] or 'FAILED', now)
  else
    redis.call('HSET', c.r, 'rbact', '')
    comp_next(c, now)
  end
  return {'ok', redis.call('HGET', c.r, 'status')}
end

local outcome = record()
if outcome[1] == 'moving' then return redis.error_reply(MOVING) end
local taken = {}
if wanted > 0 and here(base) then
  local got = redis.call('XREADGROUP', 'GROUP', GROUP, owner, 'COUNT', wanted,
    'STREAMS', JOBS, '>')
  local entries = {}
  if got and got[1] then
    -- Redis replies {{stream, entries}}; the embedded server {stream, entries}
    entries = type(got[1]) == 'table' and got[1][2] or got[2]
  end
  for _, item in ipairs(entries) do
    local id, flat = item[1], item[2]
    local f = {}
    for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
    if f.r and f.j and f.t and string.match(f.t, '^%d+$') then
      taken[#taken + 1] = {id, f.r, f.j, f.t, start(ctx(base, f.r), f.j, f.t, id, owner)}
    else
      local raw = {id}
      for i = 1, #flat do raw[#raw + 1] = flat[i] end
      taken[#taken + 1] = raw
    end
  end
end
return {outcome[1], outcome[2] or '', taken}
