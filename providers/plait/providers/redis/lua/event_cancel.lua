-- event_cancel.lua: cancel a delayed event that is not in the stream yet, by idempotency key.
-- KEYS[1] stream (routes the call to the event's slot)
-- ARGV[1] base  ARGV[2] idempotency key
-- returns 1 when cancelled (the key is released for reuse), 0 when nothing was waiting
local base = ARGV[1]
local ikey = ARGV[2]

local member = 'k:' .. ikey
if redis.call('ZREM', base .. 'delayed', member) == 0 then return 0 end
redis.call('HDEL', base .. 'delayed:data', member)
redis.call('DEL', base .. 'idem:' .. ikey)
return 1
