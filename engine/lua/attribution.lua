-- Attribution in the stream (engine/attribution.py): ONE person's touches and conversions of a batch, in
-- stream order, atomically with the counters they add. The person's touch list and the counter shard share a
-- hash tag ("{<shard>}", the shard of the person), so one script writes both: an event is counted exactly
-- once or not at all, whatever is redelivered.
--
-- KEYS[1]  touch state of the person "touch:{<shard>}:<subject>": a JSON string
--          {"o": {<topic:partition>: highest offset applied}, "d": [event tokens, newest last],
--           "t": [[ts_ms, action, channel, placement, arm], ... oldest first]}
-- KEYS[2]  counter shard "attr:{<shard>}": hash of counters (engine/attribution.py counter_field)
-- ARGV[1]  offset field ("events:3"): events at or below the stored offset were applied (a replay)
-- ARGV[2]  TTL seconds of the touch state (the window: touches older than it can no longer be credited)
-- ARGV[3]  at most this many touches are kept (the oldest go first)
-- ARGV[4]  window, ms: a conversion credits the touches at most this much older than itself
-- ARGV[5]  models, one letter each: l = last touch, n = linear, p = position-based (40/20/40)
-- ARGV[6]  JSON flat array, per event: offset, token, ts_ms, kind, then
--          kind "i" (impression) or "k" (click): action, channel, placement, arm
--          kind "c" (conversion): value
--          kind "m" (a touch merged from an anonymous id the person identified as): action, channel,
--          placement, arm: kept, not counted again (its ARGV[1] is a merge offset field of its own)
-- Returns {applied, conversions credited}.
local key, shard = KEYS[1], KEYS[2]
local off_field = ARGV[1]
local ttl = tonumber(ARGV[2])
local max_touches = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local models = ARGV[5]
local A = cjson.decode(ARGV[6])
local DEDUP = 64 -- event tokens remembered (engine/attribution.py DEDUP_TOKENS)
local SEP = '\31'

local raw = redis.call('GET', key)
local S = raw and cjson.decode(raw) or {o = {}, d = {}, t = {}}
if type(S.o) ~= 'table' then S.o = {} end
if type(S.d) ~= 'table' then S.d = {} end
if type(S.t) ~= 'table' then S.t = {} end
local stored = tonumber(S.o[off_field] or -1)
local seen = {}
for _, tok in ipairs(S.d) do seen[tok] = true end

-- counters summed over the batch, written with one HINCRBYFLOAT each at the end
local inc = {}
local function add(field, n)
  inc[field] = (inc[field] or 0) + n
end
local function row(t)
  return t[2] .. SEP .. t[3] .. SEP .. t[4] .. SEP .. t[5] .. SEP
end

local function credit(model, touches, value)
  local n = #touches
  local shares = {}
  if model == 'l' then
    shares[n] = 1
  elseif model == 'n' then
    for i = 1, n do shares[i] = 1 / n end
  else -- 'p': 40% first, 40% last, 20% shared by the middle; 2 touches: 50/50; 1: all
    if n == 1 then
      shares[1] = 1
    elseif n == 2 then
      shares[1], shares[2] = 0.5, 0.5
    else
      shares[1], shares[n] = 0.4, 0.4
      for i = 2, n - 1 do shares[i] = 0.2 / (n - 2) end
    end
  end
  for i = 1, n do
    local s = shares[i]
    if s ~= nil then
      local r = row(touches[i])
      add(r .. 'c:' .. model, s)
      if value > 0 then
        add(r .. 'r:' .. model, s * value)
        add(r .. 'q:' .. model, (s * value) ^ 2) -- squares: the variance of revenue per impression
      end
    end
  end
end

local applied, credited, merged = 0, 0, false
local max_off = stored
local p, nA = 1, #A
while p <= nA do
  local off, tok, ts, kind = A[p], A[p + 1], A[p + 2], A[p + 3]
  local nargs = (kind == 'c') and 1 or 4
  local fresh = off > stored and not (tok ~= '' and seen[tok])
  if fresh then
    applied = applied + 1
    if tok ~= '' then
      seen[tok] = true
      table.insert(S.d, tok)
      if #S.d > DEDUP then table.remove(S.d, 1) end
    end
    if kind == 'c' then
      local value = A[p + 4]
      local touches = {}
      for _, t in ipairs(S.t) do
        if t[1] <= ts and t[1] >= ts - window then touches[#touches + 1] = t end
      end
      add('all:c', 1)
      if value > 0 then add('all:r', value) end
      if #touches == 0 then
        add('u:c', 1)
        if value > 0 then add('u:r', value) end
      else
        credited = credited + 1
        for m = 1, #models do credit(string.sub(models, m, m), touches, value) end
      end
    elseif kind == 'm' then
      table.insert(S.t, {ts, A[p + 4], A[p + 5], A[p + 6], A[p + 7]})
      merged = true
    else
      local t = {ts, A[p + 4], A[p + 5], A[p + 6], A[p + 7]}
      add(row(t) .. kind, 1)
      table.insert(S.t, t)
    end
  end
  if off > max_off then max_off = off end
  p = p + 4 + nargs
end

if applied == 0 then return {0, 0} end
-- merged touches interleave by time with the person's own (ties keep a stable order: then by action)
if merged then
  table.sort(S.t, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
end
-- keep the touches still inside the window of the newest one, at most max_touches
local newest = 0
for _, t in ipairs(S.t) do if t[1] > newest then newest = t[1] end end
local kept = {}
for _, t in ipairs(S.t) do
  if t[1] >= newest - window then kept[#kept + 1] = t end
end
while #kept > max_touches do table.remove(kept, 1) end
S.t = kept
S.o[off_field] = max_off
for f, n in pairs(inc) do redis.call('HINCRBYFLOAT', shard, f, n) end
-- cjson writes an empty table as {}: "t" and "d" are read back as tables either way
redis.call('SET', key, cjson.encode(S), 'EX', ttl)
return {applied, credited}
