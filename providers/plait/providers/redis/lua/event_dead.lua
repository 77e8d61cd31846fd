-- event_dead.lua: give up a delivery: dead-letter it with the reason, acknowledge it for the group.
-- KEYS[1] stream
-- ARGV[1] base  ARGV[2] group  ARGV[3] consumer  ARGV[4] entry id  ARGV[5] reason
-- ARGV[6] error JSON ('' for none)  ARGV[7] entry fields JSON  ARGV[8] attempts made
-- ARGV[9] approximate cap of the dead-letter stream
-- returns the dead-letter entry id, or false when the entry is no longer held by this consumer
local stream = KEYS[1]
local base = ARGV[1]
local group = ARGV[2]
local consumer = ARGV[3]
local id = ARGV[4]
local reason = ARGV[5]
local err = ARGV[6]
local fields = ARGV[7]
local attempts = ARGV[8]
local dead_cap = ARGV[9]

if holder(stream, group, id) ~= consumer then return false end
return bury(base, stream, group, id, reason, err, fields, attempts, dead_cap)
