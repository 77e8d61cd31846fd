-- event_lib.lua: functions shared by the event_*.lua scripts (prepended to each).
--
-- A stream entry holds: id (the event id), data (JSON), meta (JSON object), and reply
-- ("<channel>|<request id>|<lifetime ms of the kept reply>") for requests. Per group, an entry
-- waiting for a retry stays pending in the group and sits in retry:<group> (entry id -> due
-- ms); attempts:<group> counts the attempts of an entry that failed or were lost (absent: none
-- yet).
--
-- Each script declares in KEYS every key it touches (the key schema: _core/keys.py), the
-- event's stream first when it touches it, so Redis Cluster checks them all before running it
-- (while a slot moves, a script whose keys are not all on the node is refused up front rather
-- than failing half-way). A script checks what it computes with before its first write. It
-- names its KEYS and ARGV in locals at its top; those must not reuse the names of the functions
-- below.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The consumer holding `id` in `group`, or nil when it is not pending there.
local function holder(stream, group, id)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if p[1] then return p[1][2] end
  return nil
end

local function flat_to_json(fields)
  local out = {}
  for i = 1, #fields, 2 do out[fields[i]] = fields[i + 1] end
  return cjson.encode(out)
end

-- Record a delivery that is given up in the dead-letter stream and acknowledge it for `group`
-- (`k`: the script's keys, stream, dead, retry and attempts of the group).
local function bury(k, group, id, reason, err, fields, attempts, cap)
  local dead = redis.call('XADD', k.dead, 'MAXLEN', '~', cap, '*',
    'entry', id, 'group', group, 'reason', reason, 'error', err, 'fields', fields,
    'attempts', attempts)
  redis.call('XACK', k.stream, group, id)
  redis.call('HDEL', k.attempts, id)
  redis.call('ZREM', k.retry, id)
  return dead
end

local function next_due(zset)
  local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return -1
end
