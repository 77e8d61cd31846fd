-- event_renew.lua: reset the idle time of the entries a consumer still handles (its lease),
-- skipping those another consumer has taken over meanwhile.
-- KEYS[1] stream
-- ARGV[1] group  ARGV[2] consumer  ARGV[3..] entry ids
-- returns the number of entries renewed
local stream = KEYS[1]
local group = ARGV[1]
local consumer = ARGV[2]

local renewed = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if holder(stream, group, id) == consumer then
    redis.call('XCLAIM', stream, group, consumer, 0, id, 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
