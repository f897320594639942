-- Applies a batch of feature operations to ONE owner atomically and idempotently: a customer (one hash,
-- see engine/layout.py for its fields) or the global popularity owner (a hash of landmarks and offsets,
-- plus one zset per affinity feature).
--
-- The owner's hash is read once (HGETALL) into a Lua table, every event of the batch mutates the table,
-- and the changed fields are written back once (one HSET, one HDEL if needed, one EXPIRE).
--
-- KEYS[1]  the owner's hash; KEYS[2..] the popularity zsets, addressed by index from "z" ops.
-- ARGV[1]  offset field, e.g. "off:events:3": events with an offset <= the stored one were applied
--          before (a replay after a crash) and are skipped.
-- ARGV[2]  TTL seconds of the hash (0 = none).
-- ARGV[3]  dedup window: event id tokens remembered (0 = no event-id de-duplication).
-- ARGV[4]  JSON: [[offset, token, ts, ops, is_consent], ...]. While the owner has withdrawn consent
--          to personalisation, only consent events are applied (nothing behavioural is stored).
-- Returns the number of events applied.
local h = KEYS[1]
local off_field = ARGV[1]
local ttl = tonumber(ARGV[2])
local dedup_n = tonumber(ARGV[3])
local batch = cjson.decode(ARGV[4])
local CHUNK = 64
local SEP = '\31'
local floor = math.floor
local fmt = string.format
local sub = string.sub
local find = string.find

local H = {}
do
  local flat = redis.call('HGETALL', h)
  for i = 1, #flat, 2 do H[flat[i]] = flat[i + 1] end
end
local dirty = {}
local function set(f, v)
  H[f] = v
  dirty[f] = true
end
local function del(f)
  if H[f] ~= nil then
    H[f] = nil
    dirty[f] = true
  end
end
local function int(x) return fmt('%d', x) end
local function score(x)
  -- 7 significant digits, rounded toward zero: a stored sum never exceeds what was added (so a decayed
  -- score never exceeds the undecayed total); the bias is below 1e-6 of the score per update
  local s = fmt('%.7g', x)
  if tonumber(s) > x then
    s = fmt('%.7g', x - 0.5 * 10 ^ (floor(math.log10(x)) - 6))
  end
  return s
end

local stored = tonumber(H[off_field] or '-1')
local applied = 0
local max_off = stored

-- affinity values per feature prefix: {count = n} built on first need in this batch
local aff_count = {}
local function count_prefix(prefix)
  local n = aff_count[prefix]
  if n == nil then
    n = 0
    local l = #prefix
    for f, _ in pairs(H) do
      if sub(f, 1, l) == prefix then n = n + 1 end
    end
    aff_count[prefix] = n
  end
  return n
end

local function affinity(prefix, member, w, ts, hl, topk, lfield)
  -- forward decay: a value's score is sum w * 2^((t - L)/hl) relative to the landmark L (whole seconds);
  -- L moves forward every 10 half-lives so the stored numbers stay short
  local L = tonumber(H[lfield])
  if L == nil then
    L = floor(ts)
    set(lfield, int(L))
  end
  local e = (ts - L) / hl
  if e > 10 then
    local nl = floor(ts)
    local factor = 2 ^ ((L - nl) / hl)
    local l = #prefix
    for f, v in pairs(H) do
      if sub(f, 1, l) == prefix then set(f, score(tonumber(v) * factor)) end
    end
    L = nl
    set(lfield, int(L))
    e = (ts - L) / hl
  end
  local field = prefix .. member
  local cur = tonumber(H[field])
  if cur ~= nil then
    set(field, score(cur + w * 2 ^ e))
    return
  end
  local n = count_prefix(prefix) + 1
  set(field, score(w * 2 ^ e))
  if n > topk then
    -- evict the lowest score (ties: the lowest value), as ZREMRANGEBYRANK 0 0 would
    local l = #prefix
    local lo_f, lo_s = nil, nil
    for f, v in pairs(H) do
      if sub(f, 1, l) == prefix then
        local s = tonumber(v)
        if lo_f == nil or s < lo_s or (s == lo_s and f < lo_f) then
          lo_f, lo_s = f, s
        end
      end
    end
    del(lo_f)
    n = n - 1
  end
  aff_count[prefix] = n
end

-- popularity: increments are summed per (zset, member) over the batch, then applied with one ZINCRBY per
-- member and the zset trimmed to its top_k once
local zpending = {}
local function zflush(ki)
  local p = zpending[ki]
  if p == nil then return end
  local zkey = KEYS[ki]
  for member, inc in pairs(p.inc) do
    redis.call('ZINCRBY', zkey, inc, member)
  end
  local n = redis.call('ZCARD', zkey)
  if n > p.top_k then
    redis.call('ZREMRANGEBYRANK', zkey, 0, n - p.top_k - 1)
  end
  zpending[ki] = nil
end

local function rescale_zset(ki, lfield, ts, hl)
  -- popularity zsets: move the landmark forward before doubles overflow
  local zkey = KEYS[ki]
  local L = tonumber(H[lfield])
  if L == nil then
    set(lfield, int(floor(ts)))
    return (ts - floor(ts)) / hl
  end
  local e = (ts - L) / hl
  if e > 400 then
    zflush(ki)
    local members = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
    local nl = floor(ts)
    local f = 2 ^ ((L - nl) / hl)
    for i = 1, #members, 2 do
      redis.call('ZADD', zkey, tonumber(members[i + 1]) * f, members[i])
    end
    set(lfield, int(nl))
    return (ts - nl) / hl
  end
  return e
end

-- recent values: one list per prefix, read from its chunks on first use, written back at the end
local recents = {}
local function recent_list(prefix)
  local r = recents[prefix]
  if r == nil then
    local parts = {}
    local i = 0
    while H[prefix .. i] ~= nil do
      parts[#parts + 1] = H[prefix .. i]
      i = i + 1
    end
    local items = {}
    if #parts > 0 then
      local s = table.concat(parts, SEP)
      local pos = 1
      while true do
        local q = find(s, SEP, pos, true)
        if q == nil then
          items[#items + 1] = sub(s, pos)
          break
        end
        items[#items + 1] = sub(s, pos, q - 1)
        pos = q + 1
      end
    end
    r = {items = items, chunks = i}
    recents[prefix] = r
  end
  return r
end

local function write_recent(prefix, r)
  -- greedy chunks of at most CHUNK bytes; a value is never split (a longer value gets its own chunk)
  local i, cur = 0, nil
  for _, v in ipairs(r.items) do
    if cur == nil then
      cur = v
    elseif #cur + 1 + #v <= CHUNK then
      cur = cur .. SEP .. v
    else
      if H[prefix .. i] ~= cur then set(prefix .. i, cur) end
      i = i + 1
      cur = v
    end
  end
  if cur ~= nil then
    if H[prefix .. i] ~= cur then set(prefix .. i, cur) end
    i = i + 1
  end
  for j = i, r.chunks - 1 do del(prefix .. j) end
end

local function window_parse(cur, nslots)
  local sep = find(cur, ':', 1, true)
  local counts = {}
  local pos, k = sep + 1, 1
  while k <= nslots do
    local q = find(cur, ',', pos, true)
    counts[k] = tonumber(sub(cur, pos, (q or 0) - 1)) or 0
    if q == nil then break end
    pos, k = q + 1, k + 1
  end
  return tonumber(sub(cur, 1, sep - 1)), counts
end

local function window_add(field, idx, nslots, n)
  -- "<newest bucket>:<count newest>,<count newest-1>,..." ('' = 0, trailing zeros dropped); a bucket
  -- older than the ring is dropped. The common cases (same or newer bucket) edit the string in place.
  local cur = H[field]
  if cur == nil then
    set(field, int(idx) .. ':' .. int(n))
    return
  end
  local sep = find(cur, ':', 1, true)
  local newest = tonumber(sub(cur, 1, sep - 1))
  if idx == newest then
    local q = find(cur, ',', sep + 1, true)
    local c0 = tonumber(sub(cur, sep + 1, (q or 0) - 1)) or 0
    set(field, sub(cur, 1, sep) .. int(c0 + n) .. (q and sub(cur, q) or ''))
    return
  end
  if idx > newest then
    local shift = idx - newest
    if shift >= nslots then
      set(field, int(idx) .. ':' .. int(n))
      return
    end
    -- the new bucket, shift - 1 empty ones, then the old counts cut to the ring's size
    local s = int(n) .. string.rep(',', shift) .. sub(cur, sep + 1)
    local pos, k = 0, 0
    while true do
      pos = find(s, ',', pos + 1, true)
      if pos == nil then break end
      k = k + 1
      if k == nslots then
        s = sub(s, 1, pos - 1)
        break
      end
    end
    s = string.gsub(s, ',+$', '')
    set(field, int(idx) .. ':' .. s)
    return
  end
  if newest - idx >= nslots then return end
  local _, counts = window_parse(cur, nslots)
  local p = newest - idx + 1
  counts[p] = (counts[p] or 0) + n
  local out = {}
  for k = 1, p do
    local c = counts[k] or 0
    out[k] = c ~= 0 and int(c) or ''
  end
  for k = p + 1, #counts do
    local c = counts[k]
    out[k] = c ~= 0 and int(c) or ''
  end
  set(field, int(newest) .. ':' .. string.gsub(table.concat(out, ','), ',+$', ''))
end

-- event-id de-duplication: a ring of fixed-length tokens in chunks "d:0", "d:1", ... and the cursor "d:n"
local function seen(tok)
  local tl = #tok
  local per = floor(CHUNK / tl)
  local nchunks = floor((dedup_n + per - 1) / per)
  for c = 0, nchunks - 1 do
    local s = H['d:' .. c]
    if s ~= nil then
      local pos = 1
      while true do
        local q = find(s, tok, pos, true)
        if q == nil then break end
        if (q - 1) % tl == 0 then return true end
        pos = q + 1
      end
    end
  end
  local slot = tonumber(H['d:n'] or '0')
  if slot >= dedup_n then slot = 0 end
  local c = floor(slot / per)
  local off = (slot % per) * tl
  local s = H['d:' .. c] or ''
  if #s < off then s = s .. string.rep('~', off - #s) end
  set('d:' .. c, sub(s, 1, off) .. tok .. sub(s, off + tl + 1))
  set('d:n', int((slot + 1) % dedup_n))
  return false
end

local function keep_on_wipe(f)
  local c = sub(f, 1, 1)
  return c == 'o' or c == 'k' or c == 'd'
end

-- consent withdrawn: drop every behavioural field; keep offsets, consent flags and dedup tokens
local function wipe()
  for f, _ in pairs(H) do
    if not keep_on_wipe(f) then del(f) end
  end
  recents = {}
  aff_count = {}
end

-- exposure records (engine/exposure.py), the straightforward way: split, edit, join
local function b36(n)
  local digits, out = '0123456789abcdefghijklmnopqrstuvwxyz', ''
  if n == 0 then return '0' end
  while n > 0 do
    out = sub(digits, n % 36 + 1, n % 36 + 1) .. out
    n = floor(n / 36)
  end
  return out
end
local function xsplit(v)
  local parts = {}
  for part in string.gmatch((v or '0,') .. ',', '([^,]*),') do parts[#parts + 1] = part end
  local times = {}
  for k = 3, #parts do times[#times + 1] = tonumber(parts[k], 36) end
  return tonumber(parts[1]) or 0, parts[2] ~= '' and tonumber(parts[2], 36) or nil, times
end
local function xjoin(u, m, times, k)
  table.sort(times)
  local keep = {}
  local newest = times[#times]
  for j = 1, #times do
    if j > #times - k and times[j] >= newest - 8 * 1440 then keep[#keep + 1] = b36(times[j]) end
  end
  local out = int(u) .. ',' .. (m and b36(m) or '')
  if #keep > 0 then out = out .. ',' .. table.concat(keep, ',') end
  return out
end
local function xlatest(v)
  local _, m, times = xsplit(v)
  local t = -1
  for _, x in ipairs(times) do if x > t then t = x end end
  if m and m > t then t = m end
  return t
end
local function exposure(kind, prefix, key, t, k, maxn)
  local f = prefix .. key
  if kind == 'k' then
    if H[f] ~= nil then
      local u, m, times = xsplit(H[f])
      if u ~= 0 then
        local _, comma = find(H[f], ',', 1, true)
        set(f, '0' .. sub(H[f], comma))
      end
    end
    return
  end
  if H[f] == nil then
    local fields = {}
    for g, _ in pairs(H) do
      if sub(g, 1, #prefix) == prefix then fields[#fields + 1] = g end
    end
    if #fields >= maxn then
      table.sort(fields, function(x, y)
        local tx, ty = xlatest(H[x]), xlatest(H[y])
        if tx ~= ty then return tx < ty end
        return x < y
      end)
      del(fields[1])
    end
  end
  local u, m, times = xsplit(H[f])
  if kind == 'm' then
    u = u + 1
    times[#times + 1] = t
  elseif kind == 't' then
    times[#times + 1] = t
  elseif kind == 'd' or kind == 'p' then
    if m == nil or t > m then m = t end
  elseif kind == 'M' then
    local u2, m2, t2 = xsplit(t)
    u = u + u2
    if m2 and (m == nil or m2 > m) then m = m2 end
    for _, x in ipairs(t2) do times[#times + 1] = x end
  end
  set(f, xjoin(u, m, times, k))
end

for _, ev in ipairs(batch) do
  local off = ev[1]
  local fresh = off > stored
  if fresh and dedup_n > 0 and ev[2] ~= '' then
    fresh = not seen(ev[2])
  end
  if fresh and ev[5] ~= 1 and H['kp'] == '0' then
    fresh = false
  end
  if fresh then
    applied = applied + 1
    for _, op in ipairs(ev[4]) do
      local c = op[1]
      if c == 'i' then
        set(op[2], int((tonumber(H[op[2]]) or 0) + op[3]))
      elseif c == 'a' then
        -- ["a", prefix, value, weight, ts_s, half_life_s, top_k, landmark_field]; a merge passes a score
        -- re-expressed at ts as the weight (identify), which is the same operation
        affinity(op[2], op[3], op[4], op[5], op[6], op[7], op[8])
      elseif c == 'w' then
        -- ["w", field, bucket_index, n_slots, n]
        window_add(op[2], op[3], op[4], op[5])
      elseif c == 'r' then
        -- ["r", prefix, value, size]: most recent first, distinct, bounded
        local r = recent_list(op[2])
        local items, v = r.items, op[3]
        for k = #items, 1, -1 do
          if items[k] == v then table.remove(items, k) end
        end
        table.insert(items, 1, v)
        for k = #items, op[4] + 1, -1 do items[k] = nil end
      elseif c == 'ra' then
        -- append an older value (profile merge) unless present or the list is full
        local r = recent_list(op[2])
        local items, v = r.items, op[3]
        if #items < op[4] then
          local present = false
          for k = 1, #items do
            if items[k] == v then present = true break end
          end
          if not present then items[#items + 1] = v end
        end
      elseif c == 'min' or c == 'max' then
        local v = tonumber(H[op[2]])
        if v == nil or (c == 'min' and op[3] < v) or (c == 'max' and op[3] > v) then
          set(op[2], int(op[3]))
        end
      elseif c == 'sess' then
        -- ["sess", ts_ms, session_id, timeout_ms]: a gap longer than the timeout, or a new explicit
        -- session id, starts a new session
        local ts, sid, timeout = op[2], op[3], op[4]
        local last = tonumber(H['sl'])
        if last == nil or ts - last > timeout or (sid ~= '' and sid ~= H['si']) then
          if sid == '' then sid = 's' .. int(ts) end
          set('si', sid)
          set('ss', int(ts))
          set('sl', int(ts))
          set('sp', '0')
        elseif ts > last then
          set('sl', int(ts))
        end
      elseif c == 'cart' then
        -- ["cart", field, quantity_delta]
        local q = (tonumber(H[op[2]]) or 0) + op[3]
        if q <= 0 then del(op[2]) else set(op[2], int(q)) end
      elseif c == 'cartclear' then
        for f, _ in pairs(H) do
          if sub(f, 1, 2) == 'C:' then del(f) end
        end
      elseif c == 'f' then
        set(op[2], fmt('%.15g', (tonumber(H[op[2]]) or 0) + op[3]))
      elseif c == 'set' then
        set(op[2], tostring(op[3]))
      elseif c == 'setnx' then
        if H[op[2]] == nil then set(op[2], tostring(op[3])) end
      elseif c == 'z' then
        -- popularity: ["z", key_index, member, weight, ts, half_life_s, top_k, landmark_field]
        local e = rescale_zset(op[2], op[8], op[5], op[6])
        local p = zpending[op[2]]
        if p == nil then
          p = {inc = {}, top_k = op[7]}
          zpending[op[2]] = p
        end
        p.inc[op[3]] = (p.inc[op[3]] or 0) + op[4] * 2 ^ e
      elseif c == 'x' then
        -- ["x", kind, prefix, key, minute or merged record, times kept, records kept]
        exposure(op[2], op[3], op[4], op[5], op[6], op[7])
      elseif c == 'wipe' then
        wipe()
      elseif c == 'kset' then
        -- ["kset", field, value, ts]: a merged consent choice wins over an older one (a withdrawal wipes)
        if H[op[2]] == nil or op[4] > (tonumber(H['kt']) or 0) then
          set(op[2], op[3])
          if op[2] == 'kp' and op[3] == '0' then wipe() end
        end
      elseif c == 'kgate' then
        -- ["kgate"]: the rest of the event only while personalisation is allowed
        if H['kp'] == '0' then break end
      end
    end
  end
  if off > max_off then max_off = off end
end

for ki, _ in pairs(zpending) do zflush(ki) end
for prefix, r in pairs(recents) do write_recent(prefix, r) end
if max_off > stored then set(off_field, int(max_off)) end

local hset, hdel = {}, {}
for f, _ in pairs(dirty) do
  local v = H[f]
  if v == nil then
    hdel[#hdel + 1] = f
  else
    hset[#hset + 1] = f
    hset[#hset + 1] = v
  end
end
if #hdel > 0 then redis.call('HDEL', h, unpack(hdel)) end
if #hset > 0 then redis.call('HSET', h, unpack(hset)) end
if ttl > 0 then redis.call('EXPIRE', h, ttl) end
return applied
