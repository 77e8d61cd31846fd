-- event_renew.lua: reset the idle time of the entries a consumer still handles (its lease),
-- skipping those another consumer has taken over meanwhile.
-- KEYS[1] stream
-- ARGV[1] group  ARGV[2] consumer  ARGV[3..] entry ids
-- returns the number of entries renewed
local group, consumer = ARGV[1], ARGV[2]
local renewed = 0
for i = 3, #ARGV do
  if holder(KEYS[1], group, ARGV[i]) == consumer then
    redis.call('XCLAIM', KEYS[1], group, consumer, 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
