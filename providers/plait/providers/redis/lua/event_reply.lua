-- event_reply.lua: answer a request: acknowledge the delivery that handled it, keep the reply
-- for the requester, and publish it on the requester's reply channel. The requester reads the
-- kept reply when its channel is (re)subscribed and on a slow poll, so a reply published while
-- its pub/sub connection was down is not lost. The first group to answer keeps its reply.
-- KEYS[1] stream
-- ARGV[1] base  ARGV[2] group ('': acknowledge nothing, the delivery was dead-lettered)
-- ARGV[3] entry id  ARGV[4] request id  ARGV[5] lifetime ms of the kept reply (0: keep none)
-- ARGV[6] reply channel  ARGV[7] reply message (JSON)
-- returns the number of clients the reply was published to
local stream = KEYS[1]
local base = ARGV[1]
local group = ARGV[2]
local id = ARGV[3]
local request = ARGV[4]
local lifetime = tonumber(ARGV[5])
local channel = ARGV[6]
local message = ARGV[7]

if group ~= '' then
  redis.call('XACK', stream, group, id)
  redis.call('HDEL', base .. 'attempts:' .. group, id)
end
if lifetime > 0 then
  redis.call('SET', base .. 'answer:' .. request, message, 'NX', 'PX', lifetime)
end
return redis.call('PUBLISH', channel, message)
