-- run_complete.lua: record a job's success and advance the run (fenced by the token); then
-- take up to `take` new entries of the stream for this worker and start them, so a worker
-- that finishes a step gets its next one (often the step it just enqueued) in the same call.
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events
-- ARGV[1] base  ARGV[2] run id  ARGV[3] job  ARGV[4] token  ARGV[5] entry id
-- ARGV[6] result JSON  ARGV[7] owner  ARGV[8] entries to take (0: none)
-- ARGV[9] call id (the same on every resend of this call)  ARGV[10] '1' when the completing
--   consumer has the step's rollback (recorded as <job>|rb: the rollback then runs, never
--   skipped, whichever version compensates the run)
-- returns {'ok', run status after the transition, taken} | {'stale', '', {}}
--   (stale: superseded, nothing recorded, nothing taken); taken is a list of {entry id, run,
--   job, token, what run_start.lua returns} or {entry id, field, value, ...} for an entry that
--   names no job. Entries are taken only while the slot is settled (their runs are not
--   declared). A run whose record does not parse is failed ({'ok', 'FAILED', taken}); when
--   that needs a key on another node now, nothing is written: error TRYAGAIN.
-- The outcome is recorded in the run hash, field <job>|ci = "call|status|entry,entry" (in place
-- of the id of the call that started the attempt): the same call made again (its reply was
-- lost) gets that status and the same entries, started again by the same call (so the attempts
-- it started are returned, not found lost), instead of a stale reply and new entries (while the
-- slot moves, the entries are left pending instead: reclaimed after the stall timeout).
local base = ARGV[1]
local run_id = ARGV[2]
local job = ARGV[3]
local tok = ARGV[4]
local entry = ARGV[5]
local result = ARGV[6]
local owner = ARGV[7]
local wanted = tonumber(ARGV[8] or '0')
local call = ARGV[9]
local has_rollback = ARGV[10] == '1'

local c = ctx(base, run_id, RUN)
local outcome = job .. '|ci'

-- Record the success; returns the run's status then and the time, nil when the attempt is
-- not running, or 'moving' (nothing written) when a key it needs is on another node now. The job is done before the run advances: compensate() (a late on_complete
-- times the run out) must not find it running and wait for it to settle.
local function record()
  local st = check(c, job, tok)
  if st ~= 'running' and st ~= 'cancelling' then
    ack(c, entry)
    return nil
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
    if halt == 'moving' then return 'moving' end
    if halt then
      ack(c, entry)
      return 'FAILED', now_ms()
    end
  end
  ack(c, entry)
  local now = now_ms()
  release(c, job)
  redis.call('HSET', c.r, job .. '|st', 'done', job .. '|t1', now)
  event(c, 'step.completed', job, redis.call('HGET', c.r, job .. '|at'), '')
  if step then
    redis.call('HSET', c.res, job, result)
    if has_rollback then redis.call('HSET', c.r, job .. '|rb', '1') end
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
    elseif late(c, now) then  -- on_complete ended after the deadline: the run timed out
      compensate(c, 'timeout', '', now)
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
  return redis.call('HGET', c.r, 'status'), now
end

-- Start an entry taken for this worker: what the worker gets for it (only while here(base):
-- its run is not declared).
local function take(id, flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  if f.r and f.j and f.t and string.match(f.t, '^%d+$') then
    return {id, f.r, f.j, f.t, start(ctx(base, f.r), f.j, f.t, id, owner, call)}
  end
  local raw = {id}
  for i = 1, #flat do raw[#raw + 1] = flat[i] end
  return raw
end

local taken = {}
local status, now = record()
if status == 'moving' then return redis.error_reply(MOVING) end
if status then
  local ids = {}
  if wanted > 0 and here(base) then
    local got = redis.call('XREADGROUP', 'GROUP', GROUP, owner, 'COUNT', wanted,
      'STREAMS', JOBS, '>')
    local entries = {}
    if got and got[1] then
      -- Redis replies {{stream, entries}}; the embedded server {stream, entries}
      entries = type(got[1]) == 'table' and got[1][2] or got[2]
    end
    for _, item in ipairs(entries) do
      taken[#taken + 1] = take(item[1], item[2])
      ids[#ids + 1] = item[1]
    end
  end
  redis.call('HSET', c.r, outcome, call .. '|' .. status .. '|' .. table.concat(ids, ','))
  return {'ok', status, taken}
end
local done = redis.call('HGET', c.r, outcome)
if done and string.sub(done, 1, #call + 1) == call .. '|' then
  status, done = string.match(string.sub(done, #call + 2), '^([^|]*)|(.*)$')
  if done ~= '' and not here(base) then done = '' end
  for _, id in ipairs(split(done)) do
    local item = redis.call('XRANGE', JOBS, id, id)[1]
    if item then taken[#taken + 1] = take(item[1], item[2]) end  -- gone: stale or put aside
  end
  return {'ok', status, taken}
end
check(c, job, tok, true)  -- count the refused write
return {'stale', '', taken}
