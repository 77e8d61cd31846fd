-- run_tick.lua: promote due retries (and jobs a limit put aside) to the job stream, and time
-- out runs past their deadline. The runs of the members it reads are not declared, so it
-- does nothing while the workflow's slot moves (it is called again soon).
-- KEYS[1..10] the workflow's keys (run_lib.lua): delayed holds "run|job|token" -> due ms
-- ARGV[1] base  ARGV[2] most items of each kind handled by this call
-- returns {retries promoted, runs timed out, next due ms (-1: none), server now ms}
local base = ARGV[1]
local limit = tonumber(ARGV[2])

local now = now_ms()
if not here(base) then return {0, 0, now + 200, now} end
local promoted, expired = 0, 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', DELAYED, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', DELAYED, member)
  if wake(base, member) then promoted = promoted + 1 end
end
-- Concurrency limit: forget slots of attempts no longer running (a lost release), then let as
-- many waiting jobs try again as there are free slots (each checks the limit when it starts).
local first = redis.call('ZRANGE', WAITING, 0, 0)[1]
if first then
  for _, member in ipairs(redis.call('ZRANGE', RUNNING, 0, -1)) do
    local run, job = string.match(member, '^(.*)|([^|]*)$')
    local st = run and redis.call('HGET', base .. 'run:' .. run, job .. '|st')
    if st ~= 'running' and st ~= 'cancelling' then redis.call('ZREM', RUNNING, member) end
  end
  local free = nil
  while true do
    local member = redis.call('ZRANGE', WAITING, 0, 0)[1]
    if not member then break end
    local run, job = string.match(member, '^(.*)|([^|]*)|[^|]*$')
    local lim = run and limits_in(redis.call('HGET', base .. 'run:' .. run, 'lim'))
    if not lim or not lim.cc then
      redis.call('ZREM', WAITING, member)  -- its run is gone (or failed, if its limits are corrupt)
      if run and not lim then spoil(ctx(base, run), 'lim', job) end
    else
      free = free or math.min(lim.cc - redis.call('ZCARD', RUNNING), limit)
      if free <= 0 then break end
      redis.call('ZREM', WAITING, member)
      if wake(base, member) then
        promoted = promoted + 1
        free = free - 1
      end
    end
  end
end
for _, run in ipairs(redis.call('ZRANGEBYSCORE', DEADLINES, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', DEADLINES, run)
  local c = ctx(base, run)
  local status = redis.call('HGET', c.r, 'status')
  local bad = (status == 'PENDING' or status == 'RUNNING') and sound(c)
  if bad then
    spoil(c, bad, '')
  elseif compensate(c, 'timeout', '', now) then
    expired = expired + 1
  end
end
local next_due = -1
local a = redis.call('ZRANGE', DELAYED, 0, 0, 'WITHSCORES')
local b = redis.call('ZRANGE', DEADLINES, 0, 0, 'WITHSCORES')
if a[2] then next_due = tonumber(a[2]) end
if b[2] and (next_due < 0 or tonumber(b[2]) < next_due) then next_due = tonumber(b[2]) end
return {promoted, expired, next_due, now}
