-- event_cancel.lua: cancel a delayed event that is not in the stream yet, by idempotency key.
-- KEYS[1] delayed  KEYS[2] delayed:data  KEYS[3] the idempotency key's string
-- ARGV[1] idempotency key
-- returns 1 when cancelled (the key is released for reuse), 0 when nothing was waiting
local delayed = KEYS[1]
local delayed_data = KEYS[2]
local idem = KEYS[3]
local ikey = ARGV[1]

local member = 'k:' .. ikey
if redis.call('ZREM', delayed, member) == 0 then return 0 end
redis.call('HDEL', delayed_data, member)
redis.call('DEL', idem)
return 1
