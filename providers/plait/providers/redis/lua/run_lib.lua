-- run_lib.lua: functions shared by the run_*.lua transition scripts (prepended to each).
--
-- A run hash holds: status, reason (failed|timeout|cancel), input, meta, plan (JSON list of
-- groups of step names), ikey, ihash, created, finished, deadline, tmo, ret (retention ms),
-- gi (current group, 1-based), pend (steps of the group not done), tok (fencing counter),
-- order (completed steps, in completion order), comp (steps still to compensate, next first),
-- rbact (the compensation job running now), infl (steps still running while compensating),
-- err (the error that failed the run), result, jobs (every job, in scheduling order), and per
-- job J: J|st (queued running retrying done failed cancelling cancelled, parked: a wait or
-- sleep, see the waits section at the end), J|at (attempt),
-- J|tk (token of the live attempt), J|en (its stream entry), J|ow (owner), J|ci (the call that
-- started it, then the outcome of the one that completed it), J|t0, J|t1, J|er (last error),
-- J|pg (progress), J|pc (the call that saved it), J|o<token> (the outcome of the run_fail call
-- that failed that attempt); rcall/ccall: the last retry/cancel call that changed the run.
-- Each call names itself with a call id, the same on every resend of one call: a call made
-- again because its reply was lost gets the outcome it had, instead of finding its own write.
-- Jobs are step names, '~complete' (on_complete), '~error' (on_error), '~rb:<step>'.
-- Pinned at execute, whichever version later runs an attempt: 'caps' (the hooks and rollbacks
-- of the executing instance's consumer, JSON {oc, oe, rb}; '' when it had none), 'opts' (the
-- step options: retry policies and timeouts, JSON; '' when no step has any) and 'ver' (the
-- definition's version); J|rb = '1' when the instance that completed step J had its rollback,
-- J|nc the first time (ms) job J was put back with no live instance announcing it.
-- 'lim' holds the global limits of the run's workflow, JSON {cc = most running attempts across
-- instances, rl = {step = {starts, period ms}}}; a job put aside by a limit is 'waiting'.
--
-- Keys (the key schema: _core/keys.py). Every script declares in KEYS the keys it touches, so
-- Redis Cluster checks them before the script runs: KEYS[1..10] are the workflow's own keys,
-- in the order below, then come the keys of each run the caller names (run hash, results,
-- events; a start adds the step's rate-limit zset), from KEYS[RUN] on; ctx(base, run, at)
-- takes a run's keys from KEYS[at]. While a slot migrates, Redis answers TRYAGAIN (or ASK,
-- MOVED) before running a script whose declared keys are not all on the node, so a declared
-- key is never missing half-way. base (<prefix>:{<wf>}:) is ARGV[1].
--
-- Keys a script cannot know in advance are not declared: the run of an entry it reads from the
-- stream, of a member of the waiting, delayed or deadlines set (ctx without `at`), and a run's
-- idempotency key. Redis does not check those before the script, and one that is on another
-- node while the slot moves fails the command that touches it, after the writes before it.
-- So they are touched only where here() says this node serves them: always while the slot is
-- settled, else only a key this node holds. A script that needs such a key and
-- cannot reach it refuses before its first write (TRYAGAIN: the client tries again) or leaves
-- that work for later (the tick wakes waiting jobs, the next read takes the next entries).
--
-- Order: a transition reads and checks what it computes with before its first write (sound(),
-- ready()), so it never stops half-way; a run whose record does not parse is failed with the
-- reason (spoil()) instead. A script names its KEYS and ARGV in locals at its top; those must
-- not reuse the names defined here (GROUP, FINAL, RUN, MOVING, the workflow's keys and
-- the functions), which they would shadow.

local GROUP = 'plait'
local FINAL = {failed = 'FAILED', timeout = 'TIMED_OUT', cancel = 'CANCELLED'}

-- The workflow's keys (WorkflowKeys): KEYS[1..10] of every run script, in this order.
local JOBS, DELAYED, WAITING, RUNNING, DEADLINES, ACTIVE, RUNS, CONSUMERS, STATS, STATUS =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local RUN = 11  -- the keys of the first run a script names start here

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The keys of `run`: declared at KEYS[at..at + 2] (with the rate-limit zset of the job it
-- starts at KEYS[at + 3] for a start), or, without `at`, derived from base for a run the
-- script could not know in advance, which it may touch only while here(base) holds.
local function ctx(base, run, at)
  if at then
    return {base = base, run = run, r = KEYS[at], res = KEYS[at + 1], ev = KEYS[at + 2],
            rate = KEYS[at + 3]}
  end
  local r = base .. 'run:' .. run
  return {base = base, run = run, r = r, res = r .. ':results', ev = r .. ':events'}
end

-- Whether this node serves the undeclared `key` now. EXISTS of it with a declared key fails
-- (inside pcall: nothing written) only while the slot migrates or imports and `key` is
-- elsewhere or nowhere (a declared key is here then, or Redis would not run the script). With
-- `key` nil: whether the slot is settled on this node (asked once per call, of a key that
-- never exists), when every key of the slot is this node's.
local settled_now = nil
local function here(base, key)
  if settled_now == nil then
    settled_now = type(redis.pcall('EXISTS', JOBS, base .. 'settled')) == 'number'
  end
  return settled_now or (key ~= nil and type(redis.pcall('EXISTS', JOBS, key)) == 'number')
end

-- What a transition that needs an undeclared key another node holds now returns, having
-- written nothing (redis.error_reply(MOVING)): clients try again, as for Redis's own TRYAGAIN.
local MOVING = 'TRYAGAIN a key of the run is on another node while its slot moves'

-- The status index (STATUS) holds one member per ended run, 'STATUS|created ms (13 digits)|run
-- id', score 0: an end status's runs sort by creation time (ZRANGEBYLEX). Live runs are not in
-- it (ACTIVE lists them; their status is the record's), so a run's start and steps write
-- nothing to it: finalize() adds the member, a retry removes it.
local ENDED = {COMPLETED = true, FAILED = true, CANCELLED = true, TIMED_OUT = true}
local function status_member(c, status, created)
  created = tostring(created or '')
  return status .. '|' .. string.rep('0', 13 - #created) .. created .. '|' .. c.run
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

-- Which hooks and rollbacks the run recorded at execute (its 'caps' field: JSON {oc, oe, rb},
-- from the consumer of the instance that executed it), nil when it recorded none (executed by
-- an instance without that consumer) or they do not parse.
local function caps(c)
  local raw = redis.call('HGET', c.r, 'caps')
  if not raw or raw == '' then return nil end
  local ok, cp = pcall(cjson.decode, raw)
  if ok and type(cp) == 'table' and type(cp.rb) == 'table' then return cp end
  return nil
end

-- How long an instance's announcement stays live without a heartbeat refreshing it (ms):
-- ANNOUNCED_FOR of _ops/heartbeat.py.
local ANNOUNCED_FOR = 20000

-- Whether a live instance announced that it can run `job` (CONSUMERS: provider id ->
-- "<seen ms>|<version>|,<job>,...,"), and whether any instance is live at all. `now`: Redis ms.
local function announced(job, now)
  local rows = redis.call('HVALS', CONSUMERS)
  local live = false
  local needle = ',' .. job .. ','
  for _, row in ipairs(rows) do
    local seen, jobs = string.match(row, '^(%d+)|[^|]*|(.*)$')
    if seen and now - tonumber(seen) <= ANNOUNCED_FOR then
      live = true
      if string.find(jobs, needle, 1, true) then return true, true end
    end
  end
  return false, live
end

-- Whether a hook or rollback is queued: the run recorded it (`pinned`), or a live instance
-- announces it, or the run recorded no caps (`cp` nil) and no instance is live to say (then it
-- is queued, and the first instance to take it decides, see run_release.lua).
local function runs(pinned, cp, job, now)
  if pinned then return true end
  local yes, live = announced(job, now)
  return yes or (not cp and not live)
end

-- Returns the job's state and the run's status when `tok` is the live attempt's token, else
-- nil; with `fence`, a write refused because its attempt was superseded is counted (stats
-- field 'fenced').
local function check(c, job, tok, fence)
  local v = redis.call('HMGET', c.r, job .. '|tk', job .. '|st', 'status')
  if not v[1] or v[1] ~= tok then
    if fence and v[1] then redis.call('HINCRBY', STATS, 'fenced', 1) end
    return nil, v[3]
  end
  return v[2], v[3]
end

-- Acknowledge and delete a stream entry: only transition scripts ever do this.
local function ack(c, entry)
  if entry ~= '' then
    redis.call('XACK', JOBS, GROUP, entry)
    redis.call('XDEL', JOBS, entry)
  end
end

-- Put an attempt of `job` with token `tok` on the stream and remember its entry. An instance
-- that waits for this workflow's jobs without a read of its own (it set STATS 'idle' before a
-- read that found nothing) is told on the workflow's 'wake' channel; the flag goes with it.
local function push(c, job, tok)
  local id = redis.call('XADD', JOBS, '*', 'r', c.run, 'j', job, 't', tok)
  redis.call('HSET', c.r, job .. '|st', 'queued', job .. '|tk', tok, job .. '|en', id)
  if redis.call('HDEL', STATS, 'idle') == 1 then redis.call('PUBLISH', c.base .. 'wake', '') end
end

-- A job put aside by a global limit ("run|job|token" in the waiting or delayed set) may try
-- to start again, unless it was cancelled or superseded meanwhile. Its run is not declared:
-- only while here(base) holds.
-- A parked job (a wait, a sleep, a delayed start) whose time came goes on instead (woke(), in
-- the waits section at the end).
local woke
local function wake(base, member)
  local run, job, tok = string.match(member, '^(.*)|([^|]*)|([^|]*)$')
  if not run then return false end
  local c = ctx(base, run)
  local v = redis.call('HMGET', c.r, job .. '|tk', job .. '|st')
  if v[1] ~= tok then return false end
  if v[2] == 'parked' then return woke(c, job, now_ms()) end
  if v[2] ~= 'retrying' and v[2] ~= 'waiting' then return false end
  push(c, job, tok)
  return true
end

-- An attempt stopped running: free its slot under the workflow's concurrency limit and let
-- the job that waited longest try again (while the slot moves, the tick does that later).
local function release(c, job)
  if redis.call('ZREM', RUNNING, c.run .. '|' .. job) == 0 or not here(c.base) then return end
  while true do
    local oldest = redis.call('ZRANGE', WAITING, 0, 0)[1]
    if not oldest then return end
    redis.call('ZREM', WAITING, oldest)
    if wake(c.base, oldest) then return end
  end
end

-- `tok` was checked by sound(); an attempt counter that does not parse starts again at 1.
local function enqueue(c, job)
  local tok = redis.call('HINCRBY', c.r, 'tok', 1)
  local at = redis.pcall('HINCRBY', c.r, job .. '|at', 1)
  if type(at) ~= 'number' then
    at = 1
    redis.call('HSET', c.r, job .. '|at', at)
  end
  if at == 1 then append(c, 'jobs', job) end
  push(c, job, tok)
  return tok
end

-- Give the run a deadline. When it is now the workflow's earliest, every instance's timer
-- (asleep until the earliest time it knew of) is told on the 'deadline' channel; returns
-- whether it was told. Runs with the same timeout never need this while others are live.
local function set_deadline(c, at)
  local first = redis.call('ZRANGE', DEADLINES, 0, 0, 'WITHSCORES')[2]
  redis.call('HSET', c.r, 'deadline', at)
  redis.call('ZADD', DEADLINES, at, c.run)
  if first and tonumber(first) <= at then return false end
  redis.call('PUBLISH', c.base .. 'deadline', at)
  return true
end

-- Put `member` (run|job|token) in the delayed set, due at `due`. Every job that waits for a
-- time goes through here (a retry, a put-back, a wait's timeout, a sleep, a delayed or
-- debounced start, a rate limit): when it is now the workflow's earliest, every instance's
-- timer (asleep until the earliest time it knew of) is told on the 'deadline' channel, as for
-- a deadline.
local function later(base, due, member)
  local first = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')[2]
  redis.call('ZADD', DELAYED, due, member)
  if not first or tonumber(first) > tonumber(due) then
    redis.call('PUBLISH', base .. 'deadline', due)
  end
end

-- Whether the run has passed its deadline (a run completing now would be late). A deadline
-- that does not parse counts as none.
local function late(c, now)
  local deadline = tonumber(redis.call('HGET', c.r, 'deadline') or '') or 0
  return deadline > 0 and now >= deadline
end

local key_release  -- (per-key concurrency, defined below advance())

-- The run's idempotency key (c.idem) was found by sound() or spoil(), and checked with here().
local function finalize(c, status, now)
  local v = redis.call('HMGET', c.r, 'status', 'created', 'ret', 'pk')
  redis.call('HSET', c.r, 'status', status, 'finished', now)
  if ENDED[v[1]] then redis.call('ZREM', STATUS, status_member(c, v[1], v[2])) end
  redis.call('ZADD', STATUS, 0, status_member(c, status, v[2]))
  redis.call('ZREM', DEADLINES, c.run)
  redis.call('ZREM', ACTIVE, c.run)
  event(c, 'finished', '', '', status)
  local ret = tonumber(v[3] or '') or 86400000
  redis.call('PEXPIRE', c.r, ret)
  redis.call('PEXPIRE', c.res, ret)
  redis.call('PEXPIRE', c.ev, ret)
  if c.idem then redis.call('PEXPIRE', c.idem, ret) end
  redis.call('HINCRBY', STATS, status, 1)
  redis.call('PUBLISH', c.base .. 'finished', c.run .. '|' .. status)
  if v[4] then key_release(c, v[4], now) end
end

-- Before a transition that may advance, compensate or finish the run writes anything: reads
-- the fields those compute with and returns the first that does not parse (nil when all do).
-- Sets c.plan (decoded) and c.idem (the run's idempotency key, when it has one).
local function sound(c)
  local v = redis.call('HMGET', c.r, 'plan', 'tok', 'gi', 'infl', 'ikey')
  local ok, plan = pcall(cjson.decode, v[1] or '')
  if not ok or type(plan) ~= 'table' then return 'plan' end
  for _, group in ipairs(plan) do
    if type(group) ~= 'table' then return 'plan' end
    for _, step in ipairs(group) do
      if type(step) ~= 'string' then return 'plan' end
    end
  end
  local tok, gi, infl = v[2] or '0', v[3] or '0', v[4] or '0'
  if not string.find(tok .. ',' .. gi .. ',' .. infl, '^%d+,%d+,%d+$') then  -- one test
    if not string.find(tok, '^%d+$') then return 'tok' end
    return string.find(gi, '^%d+$') and 'infl' or 'gi'
  end
  c.plan = plan
  if v[5] and v[5] ~= '' then c.idem = c.base .. 'idem:' .. v[5] end
  return nil
end

-- Fail a live run whose record does not parse (`what`: the field) without computing with it:
-- its live jobs are cancelled and superseded (no token matches ''), running ones told to stop,
-- no rollback runs, and the run ends FAILED with cause plait.CorruptRun. Returns false, having
-- written nothing, when the run's idempotency key is on another node right now.
local function spoil(c, what, job)
  local v = redis.call('HMGET', c.r, 'status', 'ikey')
  if v[1] ~= 'PENDING' and v[1] ~= 'RUNNING' and v[1] ~= 'COMPENSATING' then return true end
  local ikey = v[2]
  c.idem = nil
  if ikey and ikey ~= '' then c.idem = c.base .. 'idem:' .. ikey end
  if c.idem and not here(c.base, c.idem) then return false end
  local now = now_ms()
  for _, j in ipairs(split(redis.call('HGET', c.r, 'jobs'))) do
    local st = redis.call('HGET', c.r, j .. '|st')
    if st == 'queued' or st == 'retrying' or st == 'waiting' or st == 'running'
        or st == 'cancelling' or st == 'parked' then
      redis.call('HSET', c.r, j .. '|st', 'cancelled', j .. '|tk', '')
    end
  end
  local err = cjson.encode({step = job or '', attempt = 0, type = 'plait.CorruptRun',
    message = "the run record's field '" .. what .. "' does not parse: the run was failed"
      .. ' without running its rollbacks', traceback = ''})
  redis.call('HSET', c.r, 'reason', 'failed', 'err', err)
  if job and job ~= '' then event(c, 'step.failed', job, '', err) end
  redis.call('PUBLISH', c.base .. 'cancel', c.run)
  finalize(c, 'FAILED', now)
  return true
end

-- Before a transition of a run it names writes anything: nil when it may go on, 'spoiled' when
-- the record did not parse (`bad`: a field the script found so itself) and the run was failed
-- (spoil), 'moving' when a key it needs is on another node now (nothing was written: refuse).
local function ready(c, job, bad)
  bad = bad or sound(c)
  if bad then return spoil(c, bad, job) and 'spoiled' or 'moving' end
  if c.idem and not here(c.base, c.idem) then return 'moving' end
  return nil
end

-- Start group `gi` (steps already done, kept by a resumed run, are skipped); returns whether
-- the group exists and how many of its steps were enqueued. c.plan is from sound().
local function start_group(c, gi)
  local group = c.plan[gi]
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
    -- A rollback runs when the run recorded it (at execute, or when the instance that
    -- completed the step had it: <step>|rb) or a live instance announces it.
    local pinned = (cp and cp.rb[step]) or redis.call('HGET', c.r, step .. '|rb') == '1'
    if runs(pinned, cp, '~rb:' .. step, now) then
      redis.call('HSET', c.r, 'comp', table.concat(queue, ','), 'rbact', '~rb:' .. step)
      enqueue(c, '~rb:' .. step)
      return
    end
  end
  redis.call('HSET', c.r, 'comp', '')
  if redis.call('HEXISTS', c.r, '~error|at') == 0 and runs(cp and cp.oe, cp, '~error', now) then
    redis.call('HSET', c.r, 'rbact', '~error')
    enqueue(c, '~error')
    return
  end
  finalize(c, FINAL[redis.call('HGET', c.r, 'reason')] or 'FAILED', now)
end

-- A step (or on_complete) that was running when compensation began has settled: completed
-- (its rollback queued first) or stopped; when it was the last in flight, compensation starts.
local function settle(c, now)
  redis.call('HINCRBY', c.r, 'infl', -1)
  comp_next(c, now)
end

-- Begin compensating a live run; false when it already ended or is compensating. sound()
-- read the run first.
local function compensate(c, reason, err, now)
  local status = redis.call('HGET', c.r, 'status')
  if status ~= 'PENDING' and status ~= 'RUNNING' then return false end
  redis.call('HSET', c.r, 'status', 'COMPENSATING', 'reason', reason)
  if err and err ~= '' then redis.call('HSET', c.r, 'err', err) end
  local live = {}
  for _, step in ipairs(c.plan[tonumber(redis.call('HGET', c.r, 'gi') or '0')] or {}) do
    live[#live + 1] = step
  end
  live[#live + 1] = '~complete'
  local infl = 0
  for _, job in ipairs(live) do
    local st = redis.call('HGET', c.r, job .. '|st')
    if st == 'queued' or st == 'retrying' or st == 'waiting' or st == 'parked' then
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
  redis.call('ZREM', DEADLINES, c.run)
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
  if not runs(cp and cp.oc, cp, '~complete', now) then
    redis.call('HSET', c.r, 'result', 'null')
    finalize(c, 'COMPLETED', now)
  else
    enqueue(c, '~complete')
  end
end

-- What a worker needs to run attempt `at` of `job` (the 'run' reply of run_start.lua); `now`
-- is Redis's time, the clock the run's deadline is kept by. `v`, when the caller read them
-- already: the run's input, meta, deadline, the job's progress and last error, its options.
local function started(c, job, at, now, v)
  v = v or redis.call('HMGET', c.r, 'input', 'meta', 'deadline', job .. '|pg', job .. '|er',
    'opts')
  local out = {'run', at, v[1], v[2], v[3] or '', v[4] or '', v[5] or '', now, v[6] or ''}
  local results = redis.call('HGETALL', c.res)
  for i = 1, #results do out[#out + 1] = results[i] end
  return out
end

-- The global limits of a run (its 'lim' field), or nil when they do not parse.
local function limits_in(raw)
  if not raw or raw == '' then return {} end
  local ok, lim = pcall(cjson.decode, raw)
  if not ok or type(lim) ~= 'table' then return nil end
  if lim.cc ~= nil and type(lim.cc) ~= 'number' then return nil end
  if lim.rl ~= nil and type(lim.rl) ~= 'table' then return nil end
  for _, rate in pairs(lim.rl or {}) do
    if type(rate) ~= 'table' or type(rate[1]) ~= 'number' or type(rate[2]) ~= 'number'
      or (rate[3] ~= nil and type(rate[3]) ~= 'string') then
      return nil
    end
  end
  return lim
end

-- Per-key concurrency ------------------------------------------------------------------
-- A run executed with a concurrency key K (field 'pk') holds a slot of K while it lives:
-- <base>key:K:running (zset run -> ms) has at most the key's limit of runs; a run that finds
-- them all taken waits, PENDING with no job (field 'kq' = 1), in <base>key:K:queue (zset run ->
-- ms, oldest first). Each key has its own queue, so a busy key never holds another key's runs
-- back. When a run holding a slot ends, finalize() gives the slot to the oldest run still
-- waiting for that key, which starts its first group. Those keys are the workflow's (its hash
-- tag), named from the run's field rather than declared by every transition: touched only
-- while here() holds (a run that ends while its slot migrates between Cluster nodes keeps its
-- key's slot until the next execute of the key finds it ended: run_execute.lua).
local function key_running(base, key) return base .. 'key:' .. key .. ':running' end
local function key_queue(base, key) return base .. 'key:' .. key .. ':queue' end

-- A run of key `key` ended: free its slot and start the oldest run waiting for the key.
key_release = function(c, key, now)
  local running, queue = key_running(c.base, key), key_queue(c.base, key)
  if not here(c.base) or redis.call('ZREM', running, c.run) == 0 then return end
  while true do
    local oldest = redis.call('ZPOPMIN', queue)[1]
    if not oldest then return end
    local n = ctx(c.base, oldest)
    local v = redis.call('HMGET', n.r, 'status', 'kq')
    if v[1] == 'PENDING' and v[2] == '1' and not sound(n) then
      redis.call('ZADD', running, now, oldest)
      redis.call('HSET', n.r, 'kq', 0)
      advance(n, now)
      return
    end
  end
end
-- ---------------------------------------------------------------------------------------

-- A worker took a job's stream entry: mark the attempt running (see run_start.lua for replies).
-- The same call made again (`owner` and `call` match: its reply was lost) gets the attempt it
-- started back rather than finding it running, lost. A record that does not parse fails the
-- run ({'stale'}); {'later'} leaves the entry pending, untouched, when that cannot be done on
-- this node now (taken again after the stall timeout).
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
    if set == DELAYED then
      later(c.base, due, c.run .. '|' .. job .. '|' .. tok)
    else
      redis.call('ZADD', set, due, c.run .. '|' .. job .. '|' .. tok)
    end
    return {'wait', due}
  end

  if st == 'queued' then
    local v = redis.call('HMGET', c.r, job .. '|at', 'lim', 'deadline', 'input', 'meta',
      job .. '|pg', job .. '|er', 'opts')
    local at, lim = v[1], limits_in(v[2])
    local bad = (not lim and 'lim') or (not string.match(at or '', '^%d+$') and job .. '|at')
      or (not string.match(v[3] or '0', '^%d+$') and 'deadline')
    if bad then
      if not spoil(c, bad, job) then return {'later'} end
      ack(c, entry)
      return {'stale'}
    end
    local now = now_ms()
    if next(lim) then
      local rate = lim.rl and lim.rl[job]
      -- a per-key rate limit (rate[3], Step(rate_key=)) has a window of its own per key
      local starts = rate and rate[3] and (c.base .. 'rate:' .. job .. ':' .. rate[3])
        or c.rate or (c.base .. 'rate:' .. job)
      if rate then
        redis.call('ZREMRANGEBYSCORE', starts, '-inf', now - rate[2])
        if redis.call('ZCARD', starts) >= rate[1] then
          local first = redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')
          return defer(DELAYED, tonumber(first[2]) + rate[2])
        end
      end
      if lim.cc then
        if redis.call('ZCARD', RUNNING) >= lim.cc then return defer(WAITING, now) end
        redis.call('ZADD', RUNNING, now, c.run .. '|' .. job)
      end
      if rate then
        redis.call('ZADD', starts, now, c.run .. '|' .. job .. '|' .. tok)
        redis.call('PEXPIRE', starts, rate[2])
      end
    end
    redis.call('HSET', c.r, job .. '|st', 'running', job .. '|ow', owner, job .. '|ci', call,
      job .. '|t0', now)
    if status == 'PENDING' then redis.call('HSET', c.r, 'status', 'RUNNING') end
    event(c, 'step.started', job, at, '')
    return started(c, job, at, now, {v[4], v[5], v[3], v[6], v[7], v[8]})
  end
  if st == 'running' or st == 'cancelling' then
    local v = redis.call('HMGET', c.r, job .. '|at', job .. '|ow', job .. '|ci')
    if v[2] == owner and v[3] == call then return started(c, job, v[1], now_ms()) end
    return {'lost', v[1], v[2] or ''}
  end
  ack(c, entry)
  return {'stale'}
end

-- ==== Waits, sleeps and delayed starts (run_wait.lua, run_signal.lua, wake()) ================
-- A wait or a sleep is a step a worker parks (run_wait.lua) instead of running a handler: while
-- parked, <job>|st = 'parked', and it has no stream entry and holds no running slot. Its fields:
-- |wk its kind ('signal' or 'sleep'), |ws what became of it (waiting, signalled, timed_out,
-- woke), |w0 since when (ms), |wd when its timeout (or wake-up) is due, if it has one (then
-- "run|job|token" is in the delayed set, where the tick finds it: wake()), |wc '1' when a
-- timeout lets the run continue, |sg the id of the signal it got, and, for a signal that came
-- before its wait was reached, |sd its payload (|sg its id, |s0 when) until the wait takes it.
-- The run's 'sigs' holds the names of its signal waits (",a,b,"), 'sat' when a delayed start
-- is due: the pseudo-job '~start' (never in 'jobs') is parked until then.

-- The parked `job` is over with `result` (JSON, `state` what became of it): done, and the run
-- advances when it was the last of its group. ready() read the run first.
local function unpark(c, job, result, state, now, data)
  local v = redis.call('HMGET', c.r, job .. '|tk', job .. '|at', 'pend')
  redis.call('ZREM', DELAYED, c.run .. '|' .. job .. '|' .. (v[1] or ''))
  redis.call('HSET', c.r, job .. '|st', 'done', job .. '|t1', now, job .. '|ws', state)
  redis.call('HDEL', c.r, job .. '|sd')
  redis.call('HSET', c.res, job, result)
  event(c, 'wait.' .. state, job, v[2], data)
  local pend = (tonumber(v[3] or '') or 1) - 1
  redis.call('HSET', c.r, 'pend', pend)
  if pend <= 0 then advance(c, now) end
end

-- The time of the parked `job` came (from wake(): its run is not declared, here() holds): a
-- delayed start starts, a sleep wakes, a wait times out (failing and compensating the run,
-- unless its timeout continues it). Returns whether the run went on.
woke = function(c, job, now)
  local status = redis.call('HGET', c.r, 'status')
  if status ~= 'PENDING' and status ~= 'RUNNING' then return false end
  if ready(c, job) then return false end
  if job == '~start' then
    redis.call('HSET', c.r, '~start|st', 'done')
    local timeout = tonumber(redis.call('HGET', c.r, 'tmo') or '') or 0
    if timeout > 0 then set_deadline(c, now + timeout) end
    event(c, 'run.woke', '', '', '')
    advance(c, now)
    return true
  end
  local v = redis.call('HMGET', c.r, job .. '|wk', job .. '|wc', job .. '|at', job .. '|w0',
    job .. '|wd')
  if v[1] == 'sleep' then
    unpark(c, job, 'null', 'woke', now, '')
  elseif v[2] == '1' then
    unpark(c, job, 'null', 'timed_out', now, '')
  else
    local waited = ((tonumber(v[5] or '') or now) - (tonumber(v[4] or '') or now)) / 1000
    local err = cjson.encode({step = job, attempt = tonumber(v[3] or '') or 1,
      type = 'plait.WaitTimeout', traceback = '',
      message = "no signal '" .. job .. "' came within " .. string.format('%g', waited) .. 's'})
    redis.call('ZREM', DELAYED, c.run .. '|' .. job .. '|' .. (redis.call('HGET', c.r, job .. '|tk') or ''))
    redis.call('HSET', c.r, job .. '|st', 'failed', job .. '|t1', now, job .. '|ws', 'timed_out',
      job .. '|er', err)
    event(c, 'wait.timed_out', job, v[3], '')
    event(c, 'step.failed', job, v[3], err)
    compensate(c, 'failed', err, now)
  end
  return true
end
