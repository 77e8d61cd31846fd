-- run_dead_letter.lua: move an entry that cannot be processed to a dead-letter stream.
-- KEYS[1] source stream  KEYS[2] dead-letter stream
-- ARGV[1] consumer group  ARGV[2] entry id  ARGV[3] reason  ARGV[4] entry fields (JSON)
-- ARGV[5] approximate cap of the dead-letter stream
-- returns the dead-letter entry id, or nil when the entry is no longer in the source stream
--   (moved already: the same call made again after its reply was lost adds no second copy)
local source = KEYS[1]
local dead = KEYS[2]
local group = ARGV[1]
local entry = ARGV[2]
local reason = ARGV[3]
local fields = ARGV[4]
local dead_cap = ARGV[5]

local id = false
if #redis.call('XRANGE', source, entry, entry) > 0 then
  id = redis.call('XADD', dead, 'MAXLEN', '~', dead_cap, '*',
    'source', source, 'entry', entry, 'reason', reason, 'fields', fields)
end
redis.call('XACK', source, group, entry)
redis.call('XDEL', source, entry)
return id
