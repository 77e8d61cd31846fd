-- run_dead_letter.lua: move an entry that cannot be processed to a dead-letter stream.
-- KEYS[1] source stream  KEYS[2] dead-letter stream
-- ARGV[1] consumer group  ARGV[2] entry id  ARGV[3] reason  ARGV[4] entry fields (JSON)
-- ARGV[5] approximate cap of the dead-letter stream
-- returns the dead-letter entry id
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'source', KEYS[1], 'entry', ARGV[2], 'reason', ARGV[3], 'fields', ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return id
