-- event_dead.lua: give up a delivery: dead-letter it with the reason, acknowledge it for the group.
-- KEYS[1] stream
-- ARGV[1] base  ARGV[2] group  ARGV[3] consumer  ARGV[4] entry id  ARGV[5] reason
-- ARGV[6] error JSON ('' for none)  ARGV[7] entry fields JSON  ARGV[8] attempts made
-- ARGV[9] approximate cap of the dead-letter stream
-- returns the dead-letter entry id, or false when the entry is no longer held by this consumer
local group, id = ARGV[2], ARGV[4]
if holder(KEYS[1], group, id) ~= ARGV[3] then return false end
return bury(ARGV[1], KEYS[1], group, id, ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
