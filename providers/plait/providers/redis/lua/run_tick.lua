-- run_tick.lua: promote due retries (and jobs a limit put aside) to the job stream, and time
-- out runs past their deadline.
-- KEYS[1] delayed zset (members "run|job|token", scores due ms)
-- ARGV[1] base  ARGV[2] most items of each kind handled by this call
-- returns {retries promoted, runs timed out, next due ms (-1: none), server now ms}
local delayed = KEYS[1]
local base = ARGV[1]
local limit = tonumber(ARGV[2])

local now = now_ms()
local promoted, expired = 0, 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', delayed, member)
  if wake(base, member) then promoted = promoted + 1 end
end
-- Concurrency limit: forget slots of attempts no longer running (a lost release), then let as
-- many waiting jobs try again as there are free slots (each checks the limit when it starts).
local waiting, running = base .. 'waiting', base .. 'running'
local first = redis.call('ZRANGE', waiting, 0, 0)[1]
if first then
  for _, member in ipairs(redis.call('ZRANGE', running, 0, -1)) do
    local run, job = string.match(member, '^(.*)|([^|]*)$')
    local st = run and redis.call('HGET', base .. 'run:' .. run, job .. '|st')
    if st ~= 'running' and st ~= 'cancelling' then redis.call('ZREM', running, member) end
  end
  local free = nil
  while true do
    local member = redis.call('ZRANGE', waiting, 0, 0)[1]
    if not member then break end
    local run = string.match(member, '^(.*)|[^|]*|[^|]*$')
    local lim = redis.call('HGET', base .. 'run:' .. run, 'lim')
    if not lim or lim == '' then
      redis.call('ZREM', waiting, member)  -- its run is gone
    else
      free = free or math.min((cjson.decode(lim).cc or 0) - redis.call('ZCARD', running), limit)
      if free <= 0 then break end
      redis.call('ZREM', waiting, member)
      if wake(base, member) then
        promoted = promoted + 1
        free = free - 1
      end
    end
  end
end
local deadlines = base .. 'deadlines'
for _, run in ipairs(redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', deadlines, run)
  if compensate(ctx(base, run), 'timeout', '', now) then expired = expired + 1 end
end
local next_due = -1
local a = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
local b = redis.call('ZRANGE', deadlines, 0, 0, 'WITHSCORES')
if a[2] then next_due = tonumber(a[2]) end
if b[2] and (next_due < 0 or tonumber(b[2]) < next_due) then next_due = tonumber(b[2]) end
return {promoted, expired, next_due, now}
