-- run_lib.lua: functions shared by the run_*.lua transition scripts (prepended to each).
--
-- A run hash holds: status, reason (failed|timeout|cancel), input, meta, plan (JSON list of
-- groups of step names), ikey, ihash, created, finished, deadline, tmo, ret (retention ms),
-- gi (current group, 1-based), pend (steps of the group not done), tok (fencing counter),
-- order (completed steps, in completion order), comp (steps still to compensate, next first),
-- rbact (the compensation job running now), infl (steps still running while compensating),
-- err (the error that failed the run), result, jobs (every job, in scheduling order), and per
-- job J: J|st (queued running retrying done failed cancelling cancelled), J|at (attempt),
-- J|tk (token of the live attempt), J|en (its stream entry), J|ow (owner), J|ci (the call that
-- started it, then the outcome of the one that completed it), J|t0, J|t1, J|er (last error),
-- J|pg (progress), J|pc (the call that saved it), J|o<token> (the outcome of the run_fail call
-- that failed that attempt); rcall/ccall: the last retry/cancel call that changed the run.
-- Each call names itself with a call id, the same on every resend of one call: a call made
-- again because its reply was lost gets the outcome it had, instead of finding its own write.
-- Jobs are step names, '~complete' (on_complete), '~error' (on_error), '~rb:<step>'.
-- 'lim' holds the global limits of the run's workflow, JSON {cc = most running attempts across
-- instances, rl = {step = {starts, period ms}}}; a job put aside by a limit is 'waiting'.
--
-- Each script gets the run hash (or, for a batch, the job stream) as KEYS[1], which routes the
-- call to the workflow's slot, and base (<prefix>:{<wf>}:) as ARGV[1]; ctx(base, run) derives
-- every key of the run from them (the key schema: _core/keys.py). A script names its KEYS and
-- ARGV in locals at its top; those must not reuse the names defined here (GROUP, FINAL and the
-- functions), which they would shadow.

local GROUP = 'plait'
local FINAL = {failed = 'FAILED', timeout = 'TIMED_OUT', cancel = 'CANCELLED'}

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ctx(base, run)
  local r = base .. 'run:' .. run
  return {base = base, run = run, r = r, res = r .. ':results', ev = r .. ':events',
          jobs = base .. 'jobs'}
end

local function event(c, kind, job, attempt, data)
  redis.call('XADD', c.ev, '*', 'k', kind, 'j', job or '', 'a', attempt or '', 'd', data or '')
end

local function split(s)
  local out = {}
  if s and s ~= '' then
    for part in string.gmatch(s, '[^,]+') do out[#out + 1] = part end
  end
  return out
end

local function append(c, field, item)
  local cur = redis.call('HGET', c.r, field)
  if cur and cur ~= '' then item = cur .. ',' .. item end
  redis.call('HSET', c.r, field, item)
end

-- Which handlers the consumers of this workflow have; nil when no consumer started yet.
local function caps(c)
  local raw = redis.call('GET', c.base .. 'caps')
  if not raw then return nil end
  return cjson.decode(raw)
end

-- Returns the job's state and the run's status when `tok` is the live attempt's token, else
-- nil; with `fence`, a write refused because its attempt was superseded is counted (stats
-- field 'fenced').
local function check(c, job, tok, fence)
  local v = redis.call('HMGET', c.r, job .. '|tk', job .. '|st', 'status')
  if not v[1] or v[1] ~= tok then
    if fence and v[1] then redis.call('HINCRBY', c.base .. 'stats', 'fenced', 1) end
    return nil, v[3]
  end
  return v[2], v[3]
end

-- Acknowledge and delete a stream entry: only transition scripts ever do this.
local function ack(c, entry)
  if entry ~= '' then
    redis.call('XACK', c.jobs, GROUP, entry)
    redis.call('XDEL', c.jobs, entry)
  end
end

-- Put an attempt of `job` with token `tok` on the stream and remember its entry.
local function push(c, job, tok)
  local id = redis.call('XADD', c.jobs, '*', 'r', c.run, 'j', job, 't', tok)
  redis.call('HSET', c.r, job .. '|st', 'queued', job .. '|tk', tok, job .. '|en', id)
end

-- A job put aside by a global limit ("run|job|token" in the waiting or delayed set) may try
-- to start again, unless it was cancelled or superseded meanwhile.
local function wake(base, member)
  local run, job, tok = string.match(member, '^(.*)|([^|]*)|([^|]*)$')
  if not run then return false end
  local c = ctx(base, run)
  local v = redis.call('HMGET', c.r, job .. '|tk', job .. '|st')
  if v[1] ~= tok or (v[2] ~= 'retrying' and v[2] ~= 'waiting') then return false end
  push(c, job, tok)
  return true
end

-- An attempt stopped running: free its slot under the workflow's concurrency limit and let
-- the job that waited longest try again.
local function release(c, job)
  if redis.call('ZREM', c.base .. 'running', c.run .. '|' .. job) == 0 then return end
  local waiting = c.base .. 'waiting'
  while true do
    local oldest = redis.call('ZRANGE', waiting, 0, 0)[1]
    if not oldest then return end
    redis.call('ZREM', waiting, oldest)
    if wake(c.base, oldest) then return end
  end
end

local function enqueue(c, job)
  local tok = redis.call('HINCRBY', c.r, 'tok', 1)
  if redis.call('HINCRBY', c.r, job .. '|at', 1) == 1 then append(c, 'jobs', job) end
  push(c, job, tok)
  return tok
end

-- Give the run a deadline. When it is now the workflow's earliest, every instance's timer
-- (asleep until the earliest time it knew of) is told on the 'deadline' channel; returns
-- whether it was told. Runs with the same timeout never need this while others are live.
local function set_deadline(c, at)
  local deadlines = c.base .. 'deadlines'
  local first = redis.call('ZRANGE', deadlines, 0, 0, 'WITHSCORES')[2]
  redis.call('HSET', c.r, 'deadline', at)
  redis.call('ZADD', deadlines, at, c.run)
  if first and tonumber(first) <= at then return false end
  redis.call('PUBLISH', c.base .. 'deadline', at)
  return true
end

-- Whether the run has passed its deadline (a run completing now would be late).
local function late(c, now)
  local deadline = tonumber(redis.call('HGET', c.r, 'deadline') or '0')
  return deadline > 0 and now >= deadline
end

local function finalize(c, status, now)
  redis.call('HSET', c.r, 'status', status, 'finished', now)
  redis.call('ZREM', c.base .. 'deadlines', c.run)
  redis.call('ZREM', c.base .. 'active', c.run)
  event(c, 'finished', '', '', status)
  local ret = tonumber(redis.call('HGET', c.r, 'ret') or '86400000')
  redis.call('PEXPIRE', c.r, ret)
  redis.call('PEXPIRE', c.res, ret)
  redis.call('PEXPIRE', c.ev, ret)
  local ikey = redis.call('HGET', c.r, 'ikey')
  if ikey and ikey ~= '' then redis.call('PEXPIRE', c.base .. 'idem:' .. ikey, ret) end
  redis.call('HINCRBY', c.base .. 'stats', status, 1)
  redis.call('PUBLISH', c.base .. 'finished', c.run .. '|' .. status)
end

-- Start group `gi` (steps already done, kept by a resumed run, are skipped); returns whether
-- the group exists and how many of its steps were enqueued.
local function start_group(c, gi)
  local group = cjson.decode(redis.call('HGET', c.r, 'plan'))[gi]
  if group == nil then return false, 0 end
  local pend = 0
  for _, step in ipairs(group) do
    if redis.call('HGET', c.r, step .. '|st') ~= 'done' then
      enqueue(c, step)
      pend = pend + 1
    end
  end
  redis.call('HSET', c.r, 'gi', gi, 'pend', pend)
  return true, pend
end

-- Start the next rollback, or on_error, or finish the compensated run. Nothing starts while
-- a step that was running when compensation began is still in flight (infl): it may yet
-- complete, and its rollback must then run first (reverse completion order); settle() goes on.
local function comp_next(c, now)
  local active = redis.call('HGET', c.r, 'rbact')
  if active and active ~= '' then return end
  if tonumber(redis.call('HGET', c.r, 'infl') or '0') > 0 then return end
  local cp = caps(c)
  local queue = split(redis.call('HGET', c.r, 'comp'))
  while #queue > 0 do
    local step = table.remove(queue, 1)
    if not cp or cp.rb[step] then
      redis.call('HSET', c.r, 'comp', table.concat(queue, ','), 'rbact', '~rb:' .. step)
      enqueue(c, '~rb:' .. step)
      return
    end
  end
  redis.call('HSET', c.r, 'comp', '')
  if redis.call('HEXISTS', c.r, '~error|at') == 0 and (not cp or cp.oe) then
    redis.call('HSET', c.r, 'rbact', '~error')
    enqueue(c, '~error')
    return
  end
  finalize(c, FINAL[redis.call('HGET', c.r, 'reason')], now)
end

-- A step (or on_complete) that was running when compensation began has settled: completed
-- (its rollback queued first) or stopped; when it was the last in flight, compensation starts.
local function settle(c, now)
  redis.call('HINCRBY', c.r, 'infl', -1)
  comp_next(c, now)
end

-- Begin compensating a live run; false when it already ended or is compensating.
local function compensate(c, reason, err, now)
  local status = redis.call('HGET', c.r, 'status')
  if status ~= 'PENDING' and status ~= 'RUNNING' then return false end
  redis.call('HSET', c.r, 'status', 'COMPENSATING', 'reason', reason)
  if err and err ~= '' then redis.call('HSET', c.r, 'err', err) end
  local plan = cjson.decode(redis.call('HGET', c.r, 'plan'))
  local live = {}
  for _, step in ipairs(plan[tonumber(redis.call('HGET', c.r, 'gi') or '0')] or {}) do
    live[#live + 1] = step
  end
  live[#live + 1] = '~complete'
  local infl = 0
  for _, job in ipairs(live) do
    local st = redis.call('HGET', c.r, job .. '|st')
    if st == 'queued' or st == 'retrying' or st == 'waiting' then
      redis.call('HSET', c.r, job .. '|st', 'cancelled', job .. '|tk',
        redis.call('HINCRBY', c.r, 'tok', 1))
    elseif st == 'running' then
      redis.call('HSET', c.r, job .. '|st', 'cancelling')
      infl = infl + 1
    end
  end
  local order = split(redis.call('HGET', c.r, 'order'))
  local reversed = {}
  for i = #order, 1, -1 do reversed[#reversed + 1] = order[i] end
  redis.call('HSET', c.r, 'infl', infl, 'comp', table.concat(reversed, ','), 'rbact', '')
  redis.call('ZREM', c.base .. 'deadlines', c.run)
  event(c, 'compensating', '', '', reason)
  if infl > 0 then redis.call('PUBLISH', c.base .. 'cancel', c.run) end
  comp_next(c, now)
  return true
end

-- The current group is done: start the next one, or complete the run (unless it is past its
-- deadline: then it times out instead).
local function advance(c, now)
  local gi = tonumber(redis.call('HGET', c.r, 'gi') or '0')
  while true do
    gi = gi + 1
    local exists, pend = start_group(c, gi)
    if not exists then break end
    if pend > 0 then return end
  end
  redis.call('HSET', c.r, 'gi', gi)
  if late(c, now) then
    compensate(c, 'timeout', '', now)
    return
  end
  local cp = caps(c)
  if cp and not cp.oc then
    redis.call('HSET', c.r, 'result', 'null')
    finalize(c, 'COMPLETED', now)
  else
    enqueue(c, '~complete')
  end
end

-- What a worker needs to run attempt `at` of `job` (the 'run' reply of run_start.lua); `now`
-- is Redis's time, the clock the run's deadline is kept by.
local function started(c, job, at, now)
  local v = redis.call('HMGET', c.r, 'input', 'meta', 'deadline', job .. '|pg', job .. '|er')
  local out = {'run', at, v[1], v[2], v[3] or '', v[4] or '', v[5] or '', now}
  local results = redis.call('HGETALL', c.res)
  for i = 1, #results do out[#out + 1] = results[i] end
  return out
end

-- A worker took a job's stream entry: mark the attempt running (see run_start.lua for replies).
-- The same call made again (`owner` and `call` match: its reply was lost) gets the attempt it
-- started back rather than finding it running, lost.
local function start(c, job, tok, entry, owner, call)
  -- check()'s read, but a run key of another type answers 'foreign' for this entry alone
  -- (before any write) instead of failing the batch or the transition that took the entry.
  local v = redis.pcall('HMGET', c.r, job .. '|tk', job .. '|st', 'status')
  if v.err then  -- (tostring: the embedded server's error is not a Lua string)
    return {'foreign', 'the key of run ' .. c.run .. ' holds another type: ' .. tostring(v.err)}
  end
  if not v[3] then return {'foreign', 'run ' .. c.run .. ' does not exist'} end
  local st, status = nil, v[3]
  if v[1] == tok then st = v[2] end

  -- Put the job aside until `due` in `set` (waiting: until a running slot frees up).
  local function defer(set, due)
    ack(c, entry)
    redis.call('HSET', c.r, job .. '|st', 'waiting')
    redis.call('ZADD', c.base .. set, due, c.run .. '|' .. job .. '|' .. tok)
    return {'wait', due}
  end

  if st == 'queued' then
    local now = now_ms()
    local lim = redis.call('HGET', c.r, 'lim')
    if lim and lim ~= '' then
      lim = cjson.decode(lim)
      local rate = lim.rl and lim.rl[job]
      local starts = c.base .. 'rate:' .. job
      if rate then
        redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - rate[2])
        if redis.call('ZCARD', starts) >= rate[1] then
          local first = redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')
          return defer('delayed', tonumber(first[2]) + rate[2])
        end
      end
      if lim.cc then
        if redis.call('ZCARD', c.base .. 'running') >= lim.cc then return defer('waiting', now) end
        redis.call('ZADD', c.base .. 'running', now, c.run .. '|' .. job)
      end
      if rate then
        redis.call('ZADD', starts, now, c.run .. '|' .. job .. '|' .. tok)
        redis.call('PEXPIRE', starts, rate[2])
      end
    end
    local at = redis.call('HGET', c.r, job .. '|at')
    redis.call('HSET', c.r, job .. '|st', 'running', job .. '|ow', owner, job .. '|ci', call,
      job .. '|t0', now)
    if status == 'PENDING' then redis.call('HSET', c.r, 'status', 'RUNNING') end
    event(c, 'step.started', job, at, '')
    return started(c, job, at, now)
  end
  if st == 'running' or st == 'cancelling' then
    local v = redis.call('HMGET', c.r, job .. '|at', job .. '|ow', job .. '|ci')
    if v[2] == owner and v[3] == call then return started(c, job, v[1], now_ms()) end
    return {'lost', v[1], v[2] or ''}
  end
  ack(c, entry)
  return {'stale'}
end
