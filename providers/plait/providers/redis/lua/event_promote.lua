-- event_promote.lua: move delayed events whose time has come to the stream.
-- KEYS[1] stream
-- ARGV[1] base  ARGV[2] at most this many events
-- ARGV[3] approximate cap of the dead-letter stream
-- returns {events promoted, next due ms or -1, server now ms}
local stream = KEYS[1]
local base = ARGV[1]
local limit = tonumber(ARGV[2])
local dead_cap = ARGV[3]

local zset, data = base .. 'delayed', base .. 'delayed:data'
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  local raw = redis.call('HGET', data, member)
  local ok, f = pcall(cjson.decode, raw or '')
  if ok and type(f) == 'table' and type(f[1]) == 'string' and type(f[2]) == 'string'
      and type(f[3]) == 'string' then
    if type(f[4]) == 'string' and f[4] ~= '' then
      redis.call('XADD', stream, '*', 'id', f[1], 'data', f[2], 'meta', f[3], 'reply', f[4])
    else
      redis.call('XADD', stream, '*', 'id', f[1], 'data', f[2], 'meta', f[3])
    end
  else
    redis.call('XADD', base .. 'dead', 'MAXLEN', '~', dead_cap, '*', 'entry', member,
      'group', '', 'reason', 'undecodable delayed event', 'error', '', 'fields', raw or '',
      'attempts', 0)
  end
  redis.call('ZREM', zset, member)
  redis.call('HDEL', data, member)
  if type(f) == 'table' and f[5] and string.sub(member, 1, 2) == 'k:' then
    redis.call('PEXPIRE', base .. 'idem:' .. string.sub(member, 3), f[5])
  end
end
return {#due, next_due(zset), now}
