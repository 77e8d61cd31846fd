-- event_promote.lua: move delayed events whose time has come to the stream.
-- KEYS[1] stream  KEYS[2] delayed  KEYS[3] delayed:data  KEYS[4] dead
-- ARGV[1] at most this many events  ARGV[2] approximate cap of the dead-letter stream
-- ARGV[3] prefix of the idempotency keys (<base>idem:)
-- returns {events promoted, next due ms or -1, server now ms}
-- A delayed event's idempotency key (set without expiry by event_emit.lua) gets its retention
-- when the event is promoted. That key cannot be declared (the due members are found here):
-- while the slot moves and it is on another node, the event is left for a second later.
local stream = KEYS[1]
local zset = KEYS[2]
local data = KEYS[3]
local dead = KEYS[4]
local limit = tonumber(ARGV[1])
local dead_cap = ARGV[2]
local idem_prefix = ARGV[3]

local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', zset, '-inf', now, 'LIMIT', 0, limit)
local moved = 0
for _, member in ipairs(due) do
  local raw = redis.call('HGET', data, member)
  local ok, f = pcall(cjson.decode, raw or '')
  local idem = nil
  if ok and type(f) == 'table' and f[5] and string.sub(member, 1, 2) == 'k:' then
    idem = idem_prefix .. string.sub(member, 3)
  end
  if idem and type(redis.pcall('EXISTS', stream, idem)) ~= 'number' then
    redis.call('ZADD', zset, now + 1000, member)  -- its key is on another node: later
    member = nil
  elseif ok and type(f) == 'table' and type(f[1]) == 'string' and type(f[2]) == 'string'
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
  if member then
    redis.call('ZREM', zset, member)
    redis.call('HDEL', data, member)
    if idem then redis.call('PEXPIRE', idem, f[5]) end
    moved = moved + 1
  end
end
return {moved, next_due(zset), now}
