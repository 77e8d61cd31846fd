-- run_reconcile.lua: repair a live run whose state cannot advance by itself (an entry lost
-- from the stream, a retry missing from the delayed set, a finished group or compensation
-- step that did not advance, a deadline no timer will see), or forget a finished one.
-- A run whose record does not parse is failed (see spoil() in run_lib.lua).
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events
-- ARGV[1] base  ARGV[2] run id
-- returns {'ok', ''} | {'repaired', what was repaired} | {'gone', why it left the active set}
local base = ARGV[1]
local run_id = ARGV[2]

local c = ctx(base, run_id, RUN)
local status = redis.call('HGET', c.r, 'status')
if not status then
  redis.call('ZREM', ACTIVE, c.run)
  return {'gone', 'no record'}
end
if status ~= 'PENDING' and status ~= 'RUNNING' and status ~= 'COMPENSATING' then
  redis.call('ZREM', ACTIVE, c.run)
  return {'gone', status}
end
local deadline = redis.call('HGET', c.r, 'deadline') or '0'
local halt = ready(c, '', not string.match(deadline, '^%d+$') and 'deadline' or nil)
if halt == 'moving' then return redis.error_reply(MOVING) end
if halt then return {'gone', 'corrupt record: FAILED'} end
local now = now_ms()
deadline = tonumber(deadline)
if deadline > 0 and status ~= 'COMPENSATING' then
  if deadline <= now then
    compensate(c, 'timeout', '', now)
    return {'repaired', 'deadline'}
  end
  redis.call('ZADD', DEADLINES, 'NX', deadline, c.run)
end
local fixed = {}
local plan = c.plan
local gi = tonumber(redis.call('HGET', c.r, 'gi') or '0')
local front = {}
for _, step in ipairs(plan[gi] or {}) do front[#front + 1] = step end
front[#front + 1] = '~complete'
local rbact = redis.call('HGET', c.r, 'rbact') or ''
if rbact ~= '' then front[#front + 1] = rbact end

local function pending(entry)
  return #redis.call('XPENDING', JOBS, GROUP, entry, entry, 1) > 0
end
local function stored(entry)
  return #redis.call('XRANGE', JOBS, entry, entry) > 0
end

local cancelling = 0
for _, job in ipairs(front) do
  local st = redis.call('HGET', c.r, job .. '|st')
  local entry = redis.call('HGET', c.r, job .. '|en') or '0-0'
  if st == 'queued' and not stored(entry) then
    push(c, job, redis.call('HINCRBY', c.r, 'tok', 1))
    fixed[#fixed + 1] = job
  elseif st == 'running' and not pending(entry) then
    release(c, job)
    enqueue(c, job)
    fixed[#fixed + 1] = job
  elseif st == 'cancelling' then
    if pending(entry) then
      cancelling = cancelling + 1
    else
      redis.call('HSET', c.r, job .. '|st', 'cancelled')
      fixed[#fixed + 1] = job
    end
  elseif st == 'waiting' then
    local member = c.run .. '|' .. job .. '|' .. redis.call('HGET', c.r, job .. '|tk')
    if not redis.call('ZSCORE', WAITING, member)
        and not redis.call('ZSCORE', DELAYED, member) then
      redis.call('ZADD', WAITING, now, member)
      fixed[#fixed + 1] = job
    end
  elseif st == 'parked' then  -- a wait or sleep: its timeout must be in the delayed set
    local v = redis.call('HMGET', c.r, job .. '|tk', job .. '|wd')
    local member = c.run .. '|' .. job .. '|' .. (v[1] or '')
    if v[2] and not redis.call('ZSCORE', DELAYED, member) then
      later(c.base, v[2], member)
      fixed[#fixed + 1] = job
    end
  elseif st == 'retrying' then
    local member = c.run .. '|' .. job .. '|' .. redis.call('HGET', c.r, job .. '|tk')
    if not redis.call('ZSCORE', DELAYED, member) then
      later(c.base, now, member)
      fixed[#fixed + 1] = job
    end
  end
end

if status == 'COMPENSATING' then
  local rbst = rbact ~= '' and redis.call('HGET', c.r, rbact .. '|st') or nil
  if rbact ~= '' and (rbst == 'done' or rbst == 'failed' or not rbst) then
    redis.call('HSET', c.r, 'rbact', '')
    fixed[#fixed + 1] = 'compensation'
  end
  if tonumber(redis.call('HGET', c.r, 'infl') or '0') ~= cancelling then
    redis.call('HSET', c.r, 'infl', cancelling)
    fixed[#fixed + 1] = 'in-flight count'
  end
  if #fixed > 0 then comp_next(c, now) end
elseif gi == 0 and redis.call('HGET', c.r, 'kq') == '1' then
  -- waiting for a slot of its concurrency key (run_lib.lua): a run of the key that ends starts it
elseif gi == 0 and redis.call('HGET', c.r, '~start|st') == 'parked' then  -- a delayed start
  local member = c.run .. '|~start|0'
  if not redis.call('ZSCORE', DELAYED, member) then
    later(c.base, redis.call('HGET', c.r, 'sat') or now, member)
    fixed[#fixed + 1] = 'delayed start'
  end
elseif gi == 0 then
  advance(c, now)
  fixed[#fixed + 1] = 'start'
elseif plan[gi] then
  local done = true
  for _, step in ipairs(plan[gi]) do
    if redis.call('HGET', c.r, step .. '|st') ~= 'done' then done = false end
  end
  if done then
    advance(c, now)
    fixed[#fixed + 1] = 'advance'
  end
elseif not redis.call('HGET', c.r, '~complete|st') then
  redis.call('HSET', c.r, 'gi', #plan)
  advance(c, now)
  fixed[#fixed + 1] = 'completion'
elseif redis.call('HGET', c.r, '~complete|st') == 'done' then
  finalize(c, 'COMPLETED', now)
  fixed[#fixed + 1] = 'finalize'
end
if #fixed > 0 then return {'repaired', table.concat(fixed, ',')} end
return {'ok', ''}
