-- event_promote.lua: move delayed events whose time has come to the stream.
-- KEYS[1] stream  KEYS[2] delayed  KEYS[3] delayed:data  KEYS[4] dead
-- ARGV[1] at most this many events  ARGV[2] approximate cap of the dead-letter stream
-- returns {events promoted, next due ms or -1, server now ms}
local stream = KEYS[1]
local zset = KEYS[2]
local data = KEYS[3]
local dead = KEYS[4]
local limit = tonumber(ARGV[1])
local dead_cap = ARGV[2]

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
    redis.call('XADD', dead, 'MAXLEN', '~', dead_cap, '*', 'entry', member,
      'group', '', 'reason', 'undecodable delayed event', 'error', '', 'fields', raw or '',
      'attempts', 0)
  end
  redis.call('ZREM', zset, member)
  redis.call('HDEL', data, member)
end
return {#due, next_due(zset), now}
