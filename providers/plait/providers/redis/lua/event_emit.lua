-- event_emit.lua: emit an event now or later, at most once per idempotency key.
-- KEYS[1] stream  KEYS[2] delayed  KEYS[3] delayed:data
-- KEYS[4] the idempotency key's string (only with a key)
-- ARGV[1] event id  ARGV[2] idempotency key ('' for none)
-- ARGV[3] retention ms (lifetime of the key; a delayed event's key lives until the event is
-- promoted, then retention: event_promote.lua)  ARGV[4] delay ms (0: now)  ARGV[5] data JSON
-- ARGV[6] meta JSON  ARGV[7] reply ('<channel>|<request id>|<lifetime ms>', '' for none)
-- returns {1, event id, due ms (0 when added now)} | {0, id of the event owning the key, 0}
local stream = KEYS[1]
local delayed = KEYS[2]
local delayed_data = KEYS[3]
local idem = KEYS[4]
local id = ARGV[1]
local ikey = ARGV[2]
local retention = ARGV[3]
local delay = tonumber(ARGV[4])
local data = ARGV[5]
local meta = ARGV[6]
local reply = ARGV[7]

if ikey ~= '' then
  local owner = redis.call('GET', idem)
  if owner then return {0, owner, 0} end
  if delay > 0 then
    redis.call('SET', idem, id)
  else
    redis.call('SET', idem, id, 'PX', retention)
  end
end
if delay > 0 then
  local due = now_ms() + delay
  local member = 'i:' .. id
  if ikey ~= '' then member = 'k:' .. ikey end
  redis.call('ZADD', delayed, due, member)
  redis.call('HSET', delayed_data, member, cjson.encode({id, data, meta, reply, retention}))
  return {1, id, due}
end
if reply == '' then
  redis.call('XADD', stream, '*', 'id', id, 'data', data, 'meta', meta)
else
  redis.call('XADD', stream, '*', 'id', id, 'data', data, 'meta', meta, 'reply', reply)
end
return {1, id, 0}
