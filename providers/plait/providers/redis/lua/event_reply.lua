-- event_reply.lua: answer a request: acknowledge the delivery that handled it, keep the reply
-- for the requester, and publish it on the requester's reply channel. The requester reads the
-- kept reply when its channel is (re)subscribed and on a slow poll, so a reply published while
-- its pub/sub connection was down is not lost. The first group to answer keeps its reply.
-- KEYS[1] stream  KEYS[2] the request's kept reply (answer:<request id>)
-- KEYS[3] attempts of the group (only with a group)
-- ARGV[1] group ('': acknowledge nothing, the delivery was dead-lettered)  ARGV[2] entry id
-- ARGV[3] lifetime ms of the kept reply (0: keep none)  ARGV[4] reply channel
-- ARGV[5] reply message (JSON)
-- returns the number of clients the reply was published to
local stream = KEYS[1]
local answer = KEYS[2]
local attempts = KEYS[3]
local group = ARGV[1]
local id = ARGV[2]
local lifetime = tonumber(ARGV[3])
local channel = ARGV[4]
local message = ARGV[5]

if group ~= '' then
  redis.call('XACK', stream, group, id)
  redis.call('HDEL', attempts, id)
end
if lifetime > 0 then
  redis.call('SET', answer, message, 'NX', 'PX', lifetime)
end
return redis.call('PUBLISH', channel, message)
