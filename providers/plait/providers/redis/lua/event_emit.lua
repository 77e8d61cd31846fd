-- event_emit.lua: emit an event now or later, at most once per idempotency key.
-- KEYS[1] stream
-- ARGV[1] base (<prefix>:ev:{<event>}:)  ARGV[2] event id  ARGV[3] idempotency key ('' for none)
-- ARGV[4] retention ms (lifetime of the key; a delayed event's key lives until the event is
-- promoted, then retention: event_promote.lua)  ARGV[5] delay ms (0: now)  ARGV[6] data JSON
-- ARGV[7] meta JSON  ARGV[8] reply ('<channel>|<request id>|<lifetime ms>', '' for none)
-- returns {1, event id, due ms (0 when added now)} | {0, id of the event owning the key, 0}
local stream = KEYS[1]
local base = ARGV[1]
local id = ARGV[2]
local ikey = ARGV[3]
local retention = ARGV[4]
local delay = tonumber(ARGV[5])
local data = ARGV[6]
local meta = ARGV[7]
local reply = ARGV[8]

if ikey ~= '' then
  local key = base .. 'idem:' .. ikey
  local owner = redis.call('GET', key)
  if owner then return {0, owner, 0} end
  if delay > 0 then
    redis.call('SET', key, id)
  else
    redis.call('SET', key, id, 'PX', retention)
  end
end
if delay > 0 then
  local due = now_ms() + delay
  local member = 'i:' .. id
  if ikey ~= '' then member = 'k:' .. ikey end
  redis.call('ZADD', base .. 'delayed', due, member)
  local entry = cjson.encode({id, data, meta, reply, retention})
  redis.call('HSET', base .. 'delayed:data', member, entry)
  return {1, id, due}
end
if reply == '' then
  redis.call('XADD', stream, '*', 'id', id, 'data', data, 'meta', meta)
else
  redis.call('XADD', stream, '*', 'id', id, 'data', data, 'meta', meta, 'reply', reply)
end
return {1, id, 0}
