-- event_dead.lua: give up a delivery: dead-letter it with the reason, acknowledge it for the group.
-- KEYS[1] stream  KEYS[2] dead  KEYS[3] retry:<group>  KEYS[4] attempts:<group>
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] entry id  ARGV[4] reason
-- ARGV[5] error JSON ('' for none)  ARGV[6] entry fields JSON  ARGV[7] attempts made
-- ARGV[8] approximate cap of the dead-letter stream
-- returns the dead-letter entry id, or false when the entry is no longer held by this consumer
local k = {stream = KEYS[1], dead = KEYS[2], retry = KEYS[3], attempts = KEYS[4]}
local group = ARGV[1]
local consumer = ARGV[2]
local id = ARGV[3]
local reason = ARGV[4]
local err = ARGV[5]
local fields = ARGV[6]
local attempts = ARGV[7]
local dead_cap = ARGV[8]

if holder(k.stream, group, id) ~= consumer then return false end
return bury(k, group, id, reason, err, fields, attempts, dead_cap)
