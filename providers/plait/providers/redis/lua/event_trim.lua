-- event_trim.lua: drop entries older than the retention that every group has acknowledged.
-- An entry is kept while a group has not read it (at or after its last-delivered id) or still
-- holds it pending, so a lagging group blocks trimming instead of losing events.
-- KEYS[1] stream
-- ARGV[1] retention cutoff ms (entries older than this may go)
-- returns the number of entries removed
local stream = KEYS[1]
local cutoff = ARGV[1]

if redis.call('EXISTS', stream) == 0 then return 0 end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

local function lower(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  if bms < ams or (bms == ams and bseq < aseq) then return b end
  return a
end

local floor = cutoff .. '-0'
local groups = redis.call('XINFO', 'GROUPS', stream)
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  floor = lower(floor, info['last-delivered-id'])
  if tonumber(info['pending']) > 0 then
    local summary = redis.call('XPENDING', stream, info['name'])
    if summary[2] then floor = lower(floor, summary[2]) end
  end
end
return redis.call('XTRIM', stream, 'MINID', floor)
