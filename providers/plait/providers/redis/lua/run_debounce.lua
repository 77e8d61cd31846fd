-- run_debounce.lua: execute with debounce: a burst of calls with one debounce key makes one run,
-- which starts once no call came for the quiet period (or max wait after the burst's first
-- call), with the latest call's input.
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] the new run's hash  KEYS[12] its
-- results  KEYS[13] its events  KEYS[14] the debounce key's string (<base>debounce:<key>)
-- ARGV[1] base  ARGV[2] run id (used when the call starts a burst)  ARGV[3] input hash
-- ARGV[4] input JSON  ARGV[5] meta JSON  ARGV[6] plan JSON  ARGV[7] run timeout ms (0: none)
-- ARGV[8] retention ms  ARGV[9] global limits JSON  ARGV[10] quiet period ms
-- ARGV[11] max wait ms (0: none)
-- returns {'created', run, 1 when its deadline is the workflow's earliest else 0}
--       | {'exists', run} (the burst's run, now with this call's input and a later start)
-- The burst's run is an ordinary run whose first jobs wait in the delayed set ('waiting', the
-- way a rate limit puts a job aside) until the quiet period ends; the tick starts them. Its
-- field 'dbm' lists those delayed members. The debounce key names the run ("run|first ms")
-- while it waits; a call that finds the run started begins a new burst.
local base = ARGV[1]
local run_id = ARGV[2]
local ihash, input, meta, plan = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local timeout, retention, limits = tonumber(ARGV[7]), ARGV[8], ARGV[9]
local quiet, max_wait = tonumber(ARGV[10]), tonumber(ARGV[11])
local dkey = KEYS[RUN + 3]

local now = now_ms()
local cur = redis.call('GET', dkey)
if cur then
  local owner, first = string.match(cur, '^(.*)|(%d+)$')
  if owner then
    if not here(base) then return redis.error_reply(MOVING) end
    local o = ctx(base, owner)
    local v = redis.call('HMGET', o.r, 'status', 'dbm')
    local members = split(v[2])
    local waiting = v[1] == 'PENDING' and #members > 0
    for _, member in ipairs(members) do
      local _, job, tok = string.match(member, '^(.*)|([^|]*)|([^|]*)$')
      local w = redis.call('HMGET', o.r, job .. '|st', job .. '|tk')
      if w[1] ~= 'waiting' or w[2] ~= tok then waiting = false end
    end
    if waiting then
      local due = now + quiet
      if max_wait > 0 and due > tonumber(first) + max_wait then due = tonumber(first) + max_wait end
      redis.call('HSET', o.r, 'input', input, 'ihash', ihash, 'meta', meta)
      for _, member in ipairs(members) do later(o.base, due, member) end
      redis.call('PEXPIRE', dkey, due - now + 60000)
      return {'exists', owner}
    end
  end
end

local c = ctx(base, run_id, RUN)
c.plan = cjson.decode(plan)
if redis.call('EXISTS', c.r) == 1 then return {'created', c.run, 0} end
redis.call('HSET', c.r, 'status', 'PENDING', 'input', input, 'meta', meta, 'plan', plan,
  'ikey', '', 'ihash', ihash, 'created', now, 'gi', 0, 'tok', 0, 'ret', retention, 'tmo', timeout,
  'lim', limits)
local earliest = timeout > 0 and set_deadline(c, now + timeout)
redis.call('ZADD', ACTIVE, now, c.run)
redis.call('ZADD', RUNS, now, c.run)
event(c, 'run.started', '', '', '')
advance(c, now)
-- advance() queued the first jobs: take them off the stream (no reader saw them: this is one
-- atomic call) and put them aside until the quiet period ends.
local due = now + quiet
if max_wait > 0 and max_wait < quiet then due = now + max_wait end
local members = {}
for _, job in ipairs(split(redis.call('HGET', c.r, 'jobs'))) do
  local v = redis.call('HMGET', c.r, job .. '|st', job .. '|tk', job .. '|en')
  if v[1] == 'queued' then
    redis.call('XDEL', JOBS, v[3])
    redis.call('HSET', c.r, job .. '|st', 'waiting')
    local member = c.run .. '|' .. job .. '|' .. v[2]
    later(c.base, due, member)
    members[#members + 1] = member
  end
end
if #members > 0 then
  redis.call('HSET', c.r, 'dbm', table.concat(members, ','))
  redis.call('SET', dkey, c.run .. '|' .. now, 'PX', due - now + 60000)
end
return {'created', c.run, earliest and 1 or 0}
