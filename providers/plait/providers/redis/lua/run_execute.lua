-- run_execute.lua: create a run and its first jobs, or attach to the run owning the key.
-- KEYS[1..10] the workflow's keys (run_lib.lua)  KEYS[11] run hash  KEYS[12] its results
-- KEYS[13] its events  KEYS[14] the idempotency key's string (only with a key)
-- ARGV[1] base (<prefix>:{<wf>}:)  ARGV[2] run id  ARGV[3] idempotency key ('' for none)
-- ARGV[4] input hash  ARGV[5] input JSON  ARGV[6] meta JSON  ARGV[7] plan JSON
-- ARGV[8] run timeout ms (0: none)  ARGV[9] retention ms
-- ARGV[10] global limits JSON ('' for none): {cc = running cap, rl = {step = {n, period ms}}}
-- ARGV[11] start in ms from now (0: now)  ARGV[12] start at, Redis ms (0: now; wins over 11)
-- ARGV[13] the names of its signal waits, ",a,b," ('' for none)
-- ARGV[14] the hooks and rollbacks the executing instance's consumer has, JSON {oc, oe, rb}
--   ('' when it has none of this workflow)  ARGV[15] the step options, JSON {step = {r = retry,
--   rr = rollback retry, t = timeout ms}} ('' when no step has any)  ARGV[16] the version
-- ARGV[17] concurrency key ('' for none; never with a delayed start)  ARGV[18] runs of the key
-- at once  ARGV[19] what a run finding them all running does: queue | cancel_running |
-- reject_new; with a concurrency key, the last two KEYS are <base>key:<key>:running and :queue
-- ARGV[20] how many meta index zsets (<base>meta:<field>:<value>, Workflow(indexed_meta=)) the
-- run goes in ('' or 0: none; ARGV[17..19] are then given, '' when there is no concurrency
-- key); they are the KEYS after the idempotency key's (or after the run's events without one)
-- returns {'created', run, 1 when its deadline is the workflow's earliest (timers were told)
--          else 0} | {'exists', run} | {'conflict', run owning the key}
--        | {'busy', key} (reject_new: the key's runs are all taken; nothing written)
local base = ARGV[1]
local run_id = ARGV[2]
local ikey = ARGV[3]
local ihash = ARGV[4]
local input = ARGV[5]
local meta = ARGV[6]
local plan = ARGV[7]
local timeout = tonumber(ARGV[8])
local retention = ARGV[9]
local limits = ARGV[10]
local start_in = tonumber(ARGV[11] or '0') or 0
local start_at = tonumber(ARGV[12] or '0') or 0
local sigs = ARGV[13] or ''
local pinned = ARGV[14] or ''
local options = ARGV[15] or ''
local version = ARGV[16] or ''
-- (per-key concurrency: a slot still held by a run that ended is freed first, the one write
-- made before a reject_new answer)
local pkey, plimit, pmode = ARGV[17] or '', tonumber(ARGV[18] or '0'), ARGV[19] or 'queue'
if pkey == '' then plimit = 0 end
local indexed = tonumber(ARGV[20] or '0') or 0
local first_index = RUN + 3 + (ikey ~= '' and 1 or 0)

local c = ctx(base, run_id, RUN)
c.plan = cjson.decode(plan)
if ikey ~= '' then
  c.idem = KEYS[RUN + 3]
  local cur = redis.call('GET', c.idem)
  if cur then
    local owner, hash = string.match(cur, '^(.*)|([^|]*)$')
    if hash ~= ihash then return {'conflict', owner} end
    if owner ~= c.run then return {'exists', owner} end
  end
end
if redis.call('EXISTS', c.r) == 1 then return {'created', c.run, 0} end
local held, holders = 0, {}
if pkey ~= '' then  -- per-key concurrency (run_lib.lua): checked before the first write
  held = redis.call('ZCARD', KEYS[#KEYS - 1])
  if held >= plimit and here(base) then  -- a slot kept by a run that ended unseen: freed
    for _, other in ipairs(redis.call('ZRANGE', KEYS[#KEYS - 1], 0, -1)) do
      local st = redis.call('HGET', base .. 'run:' .. other, 'status')
      if st ~= 'PENDING' and st ~= 'RUNNING' and st ~= 'COMPENSATING' then
        redis.call('ZREM', KEYS[#KEYS - 1], other)
        held = held - 1
      end
    end
  end
  if held >= plimit and pmode == 'reject_new' then return {'busy', pkey} end
  if held >= plimit and pmode == 'cancel_running' then
    if not here(base) then return redis.error_reply(MOVING) end
    for _, other in ipairs(redis.call('ZRANGE', KEYS[#KEYS - 1], 0, held - plimit)) do
      local o = ctx(base, other)
      if not sound(o) then holders[#holders + 1] = o end
    end
  end
end
if c.idem then redis.call('SET', c.idem, c.run .. '|' .. ihash) end
local now = now_ms()
redis.call('HSET', c.r, 'status', 'PENDING', 'input', input, 'meta', meta, 'plan', plan,
  'ikey', ikey, 'ihash', ihash, 'created', now, 'gi', 0, 'tok', 0, 'ret', retention, 'tmo', timeout,
  'lim', limits, 'caps', pinned, 'opts', options, 'ver', version)
if sigs ~= '' then redis.call('HSET', c.r, 'sigs', sigs) end
redis.call('ZADD', ACTIVE, now, c.run)
redis.call('ZADD', RUNS, now, c.run)
if indexed > 0 then  -- kept as long as the runs index keeps the run (the reconciler's horizon)
  local horizon = 2 * tonumber(retention) + 3600000
  for i = first_index, first_index + indexed - 1 do
    redis.call('ZADD', KEYS[i], now, c.run)
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - horizon)
    redis.call('PEXPIRE', KEYS[i], horizon)
  end
end
event(c, 'run.started', '', '', '')
local due = start_at > 0 and start_at or (start_in > 0 and now + start_in) or 0
if due > now then  -- a delayed start: parked until then, its deadline counted from then
  redis.call('HSET', c.r, 'sat', due, '~start|st', 'parked', '~start|tk', '0')
  later(c.base, due, c.run .. '|~start|0')
  return {'created', c.run, 0}
end
local earliest = timeout > 0 and set_deadline(c, now + timeout)
if pkey ~= '' then
  redis.call('HSET', c.r, 'pk', pkey)
  if held >= plimit then  -- wait for a slot of the key; cancel_running frees the oldest ones
    redis.call('HSET', c.r, 'kq', 1)
    local last = redis.call('ZRANGE', KEYS[#KEYS], -1, -1, 'WITHSCORES')[2]
    local order = now * 1000  -- µs, and after the last waiting run: executes' order, kept
    if last and tonumber(last) >= order then order = tonumber(last) + 1 end
    redis.call('ZADD', KEYS[#KEYS], order, c.run)
    for _, o in ipairs(holders) do compensate(o, 'cancel', '', now) end
    return {'created', c.run, earliest and 1 or 0}
  end
  redis.call('ZADD', KEYS[#KEYS - 1], now, c.run)
end
advance(c, now)
return {'created', c.run, earliest and 1 or 0}
