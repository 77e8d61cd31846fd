-- run_cancel.lua: cancel a live run: stop its running steps and compensate completed ones.
-- KEYS[1] run hash
-- ARGV[1] base  ARGV[2] run id
-- returns {1, status} cancelled | {0, status} already ended or compensating | {-1, ''} unknown
local base = ARGV[1]
local run_id = ARGV[2]

local c = ctx(base, run_id)
local status = redis.call('HGET', c.r, 'status')
if not status then return {-1, ''} end
if compensate(c, 'cancel', '', now_ms()) then return {1, redis.call('HGET', c.r, 'status')} end
return {0, status}
