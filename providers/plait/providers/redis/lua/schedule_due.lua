-- schedule_due.lua: the schedules whose earliest tick not fired yet has come, read with their
-- spec and state, and when the next one comes; Redis's clock decides what is due.
-- KEYS[1] due zset  KEYS[2] specs hash  KEYS[3] state hash  (one kind's, one hash tag)
-- ARGV[1] most schedules to return
-- returns {now ms, ms of the earliest tick not due yet or -1,
--          then per due schedule: id, due ms, spec JSON ('' when gone), state JSON ('' when none)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0,
  tonumber(ARGV[1]))
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local out = {now, later[2] and tonumber(later[2]) or -1}
for i = 1, #due, 2 do
  local id = due[i]
  out[#out + 1] = id
  out[#out + 1] = due[i + 1]
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
  out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
end
return out
