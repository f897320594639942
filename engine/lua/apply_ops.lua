-- Applies a batch of feature operations to ONE owner atomically and idempotently: a customer (one hash,
-- see engine/layout.py for its fields) or the global popularity owner (a hash of landmarks and offsets,
-- plus one zset per affinity feature).
--
-- The owner's hash is read once (HGETALL, as a RESP3 map so that Redis builds the Lua table itself), every
-- event of the batch mutates that table, and the changed fields are written back once (one HSET, one HDEL
-- if needed, one EXPIRE).
--
-- The script runs once per owner and batch (~1 event per call in a stream), so its fixed costs matter: the
-- arguments are one flat JSON array (a Lua table per operation cost more than the operation), numbers are
-- formatted and parsed as rarely as possible (chunk names are constants, landmarks are parsed once, the
-- TTL is passed on as it came), and recent lists are edited as joined strings and cut to size once, when
-- they are written back (bench/lua_micro.py measures it; tests/test_apply_ops.py checks that the profiles
-- written are those of the straightforward version, tests/data/apply_ops_reference.lua).
--
-- KEYS[1]  the owner's hash; KEYS[2..] the popularity zsets, addressed by index from "z" ops.
-- ARGV[1]  offset field, e.g. "off:events:3": events with an offset <= the stored one were applied
--          before (a replay after a crash) and are skipped.
-- ARGV[2]  TTL seconds of the hash (0 = none).
-- ARGV[3]  dedup window: event id tokens remembered (0 = no event-id de-duplication).
-- ARGV[4]  JSON, one flat array (engine/profile_store.py encode_events): per event
--          offset, token, is_consent, event time (ms), number of operations, then each operation: its code
--          and its arguments (ARITY below), e.g.
--          [7, "AbC-9x", 0, 1700000000000, 2, "i", "cv", 1, "max", "ls", 1700000000000].
--          While the owner has withdrawn consent to personalisation, only consent events are applied
--          (nothing behavioural is stored).
-- ARGV[5]  flags (optional): 'e' = KEYS[2] is the owner's erasure marker (a time, epoch ms): events up to
--          that time are not applied (events in flight or replayed after an erasure); 'o' = consent mode opt_in: only consent
--          events are applied until the owner's personalisation consent is '1'.
-- ARGV[6]  fields to return (optional, SEP-joined), ARGV[7] prefixes of fields to return (SEP-joined): what
--          the segment tracker reads (engine/segment_view.py view_fields), so it reads no hash after the batch.
-- A hash that did not exist is created only by an applied event (opt_in: only once some consent is
-- granted): skipped events alone leave no key behind.
-- Returns the number of events applied (-1: none, and some were refused by the erasure marker); with ARGV[6],
-- {that number, 1 if the hash exists after the writes else 0, field, value, ...} of the hash as written.
local h = KEYS[1]
local off_field = ARGV[1]
local ttl = ARGV[2] -- passed on to EXPIRE as it came (a number would be formatted again)
local dedup_n = ARGV[3] == '0' and 0 or tonumber(ARGV[3])
local batch = cjson.decode(ARGV[4])
local CHUNK = 64
local SEP = '\31'
local floor = math.floor
local fmt = string.format
local sub = string.sub
local find = string.find
local byte = string.byte
local match = string.match
local gsub = string.gsub
local SEPB = 31
local flags = ARGV[5] or ''
-- erased: events up to the marker's time (ms) are skipped, whatever their offset (a replay, events in flight)
local cutoff = find(flags, 'e', 1, true) and tonumber(redis.call('GET', KEYS[2]) or '') or nil
local blocked = false
local opt_in = find(flags, 'o', 1, true) ~= nil
-- chunk numbers and de-duplication chunk names as constants: no number formatting per call
local NUM = {[0] = '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '10', '11', '12', '13', '14', '15',
             '16', '17', '18', '19', '20', '21', '22', '23', '24', '25', '26', '27', '28', '29', '30', '31'}
local DN = {'d:0', 'd:1', 'd:2', 'd:3', 'd:4', 'd:5', 'd:6', 'd:7', 'd:8',
            'd:9', 'd:10', 'd:11', 'd:12', 'd:13', 'd:14', 'd:15'}

-- RESP3: HGETALL arrives as a map, so Redis builds the Lua table itself (no flat array, no Lua loop)
redis.setresp(3)
local H = redis.call('HGETALL', h).map
redis.setresp(2)
local existed = next(H) ~= nil
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
local function int(x) return NUM[x] or fmt('%d', x) end
-- a number that must not be stored (inf, -inf, nan): the event is refused (the worker dead-letters it)
local HUGE = math.huge
local function finite(x, what)
  if x ~= x or x == HUGE or x == -HUGE then error('non-finite ' .. what .. ': ' .. tostring(x)) end
  return x
end
local function score(x)
  -- 7 significant digits, rounded toward zero: a stored sum never exceeds what was added (so a decayed
  -- score never exceeds the undecayed total); the bias is below 1e-6 of the score per update
  finite(x, 'score')
  local s = fmt('%.7g', x)
  if tonumber(s) > x then
    s = fmt('%.7g', x - 0.5 * 10 ^ (floor(math.log10(math.abs(x))) - 6))
  end
  return s
end

local stored = tonumber(H[off_field] or '-1')
local applied = 0
local max_off = stored

-- landmarks (numbers) of the affinity and popularity features read or set in this batch
local Ls = {}
local function landmark(lfield)
  local L = Ls[lfield]
  if L == nil then
    L = tonumber(H[lfield])
    Ls[lfield] = L
  end
  return L
end
local function set_landmark(lfield, L)
  Ls[lfield] = L
  set(lfield, int(L))
end

-- affinity fields per feature prefix, {set = {field = true}, n = count}, built on first need in this batch
local aff_members = {}
local function members_of(prefix)
  local m = aff_members[prefix]
  if m == nil then
    local s, n = {}, 0
    for f, _ in pairs(H) do
      if find(f, prefix, 1, true) == 1 then
        s[f] = true
        n = n + 1
      end
    end
    m = {set = s, n = n}
    aff_members[prefix] = m
  end
  return m
end

local function affinity(prefix, member, w, ts, hl, topk, lfield)
  -- forward decay: a value's score is sum w * 2^((t - L)/hl) relative to the landmark L (whole seconds);
  -- L moves forward every 10 half-lives so the stored numbers stay short
  local L = landmark(lfield)
  if L == nil then
    L = floor(ts)
    set_landmark(lfield, L)
  end
  local e = (ts - L) / hl
  if e > 10 then
    local nl = floor(ts)
    local factor = 2 ^ ((L - nl) / hl)
    for f, _ in pairs(members_of(prefix).set) do set(f, score(tonumber(H[f]) * factor)) end
    L = nl
    set_landmark(lfield, L)
    e = (ts - L) / hl
  end
  local field = prefix .. member
  local cur = tonumber(H[field])
  if cur ~= nil then
    set(field, score(cur + w * 2 ^ e))
    return
  end
  local m = members_of(prefix)
  local mset = m.set
  set(field, score(w * 2 ^ e))
  mset[field] = true
  local n = m.n + 1
  if n > topk then
    -- evict the lowest score (ties: the lowest value), as ZREMRANGEBYRANK 0 0 would
    local lo_f, lo_s = nil, nil
    for f, _ in pairs(mset) do
      local sc = tonumber(H[f])
      if lo_f == nil or sc < lo_s or (sc == lo_s and f < lo_f) then
        lo_f, lo_s = f, sc
      end
    end
    del(lo_f)
    mset[lo_f] = nil
    n = n - 1
  end
  m.n = n
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
  local L = landmark(lfield)
  if L == nil then
    set_landmark(lfield, floor(ts))
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
    set_landmark(lfield, nl)
    return (ts - nl) / hl
  end
  return e
end

-- recent values: per prefix the list joined by SEP (s = nil: empty), read from its chunks on first use and
-- written back at the end. A push only puts its value first (removing an older copy); cutting the list to
-- its size is left to the write (r.size), which gives the same list as cutting after every push: a value
-- pushed again is at the front either way, and only the tail beyond size differs.
local recents = {}
local function recent_list(prefix)
  local r = recents[prefix]
  if r == nil then
    local parts = {}
    local i = 0
    while true do
      local v = H[prefix .. (NUM[i] or i)]
      if v == nil then break end
      i = i + 1
      parts[i] = v
    end
    local s = nil
    if i == 1 then
      s = parts[1]
    elseif i > 1 then
      s = table.concat(parts, SEP)
    end
    r = {s = s, chunks = i, size = nil}
    recents[prefix] = r
  end
  return r
end

-- the position of the first value v of the list s from position from (nil: none)
local function item_pos(s, v, from)
  local lv, ls = #v, #s
  local q = find(s, v, from, true)
  while q and q <= ls + 1 do
    local e = q + lv
    if (q == 1 or byte(s, q - 1) == SEPB) and (e > ls or byte(s, e) == SEPB) then return q end
    q = find(s, v, q + 1, true)
  end
  return nil
end

-- cut the list to its first size values (and forget the pending cut)
local function recent_cut(r, size)
  r.size = nil
  local s = r.s
  if s == nil then return end
  if size <= 0 then
    r.s = nil
    return
  end
  local pos = 0
  for _ = 1, size do
    pos = find(s, SEP, pos + 1, true)
    if pos == nil then return end
  end
  r.s = sub(s, 1, pos - 1)
end

local function recent_push(r, v, size)
  -- most recent first, distinct, at most size values
  if r.size ~= nil and r.size ~= size then recent_cut(r, r.size) end
  local s = r.s
  if s ~= nil then
    local lv = #v
    local q = item_pos(s, v, 1)
    while q do
      if q == 1 then
        if lv == #s then s = nil else s = sub(s, lv + 2) end
      else
        s = sub(s, 1, q - 2) .. sub(s, q + lv)
      end
      if s == nil then break end
      q = item_pos(s, v, q > 1 and q - 1 or 1)
    end
  end
  if size <= 0 then
    r.s, r.size = nil, nil
  elseif s == nil then
    r.s, r.size = v, size
  else
    r.s, r.size = v .. SEP .. s, size
  end
end

local function recent_append(r, v, size)
  -- an older value (profile merge) goes last unless present or the list is full
  if r.size ~= nil then recent_cut(r, r.size) end
  local s = r.s
  if s == nil then
    if size > 0 then r.s = v end
    return
  end
  local n, pos = 1, find(s, SEP, 1, true)
  while pos do
    n = n + 1
    pos = find(s, SEP, pos + 1, true)
  end
  if n < size and not item_pos(s, v, 1) then r.s = s .. SEP .. v end
end

local function write_recent(prefix, r)
  -- greedy chunks of at most CHUNK bytes; a value is never split (a longer value gets its own chunk)
  local i = 0
  local s = r.s
  if s ~= nil then
    local limit = r.size or -1
    local cs, ce = 1, nil -- current chunk: s[cs..ce]
    local a, items = 1, 0
    while true do
      local q = find(s, SEP, a, true)
      local b = q and q - 1 or #s
      items = items + 1
      if ce == nil then
        cs, ce = a, b
      elseif b - cs + 1 <= CHUNK then
        ce = b
      else
        local cur = sub(s, cs, ce)
        local f = prefix .. (NUM[i] or i)
        if H[f] ~= cur then set(f, cur) end
        i = i + 1
        cs, ce = a, b
      end
      if q == nil or items == limit then break end
      a = q + 1
    end
    local cur = sub(s, cs, ce)
    local f = prefix .. (NUM[i] or i)
    if H[f] ~= cur then set(f, cur) end
    i = i + 1
  end
  for j = i, r.chunks - 1 do del(prefix .. (NUM[j] or j)) end
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
  local ns, c0s, rest = match(cur, '^([^:]*):([^,]*)(.*)$')
  local sep = #ns + 1
  local newest = tonumber(ns)
  if idx == newest then
    set(field, ns .. ':' .. int((tonumber(c0s) or 0) + n) .. rest)
    return
  end
  if idx > newest then
    local shift = idx - newest
    if shift >= nslots then
      set(field, int(idx) .. ':' .. int(n))
      return
    end
    -- the new bucket, shift - 1 empty ones, then the old counts cut to the ring's size
    -- (the ring keeps nslots counts: the old ones after their (nslots - shift)-th comma go)
    local old = sub(cur, sep + 1)
    local k = nslots - shift
    local _, nc = gsub(old, ',', '')
    if nc >= k then
      local d, pos = nc - k + 1, 0 -- the k-th comma is the d-th from the end
      if k <= d then
        for _ = 1, k do pos = find(old, ',', pos + 1, true) end
      else
        local rev = string.reverse(old)
        for _ = 1, d do pos = find(rev, ',', pos + 1, true) end
        pos = #old - pos + 1
      end
      old = sub(old, 1, pos - 1)
    end
    local s = int(n) .. string.rep(',', shift) .. old
    if byte(s, -1) == 44 then s = gsub(s, ',+$', '') end
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
  for c = 1, nchunks do
    local s = H[DN[c] or ('d:' .. (c - 1))]
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
  local name = DN[c + 1] or ('d:' .. c)
  local s = H[name] or ''
  if #s < off then s = s .. string.rep('~', off - #s) end
  set(name, sub(s, 1, off) .. tok .. sub(s, off + tl + 1))
  set('d:n', int((slot + 1) % dedup_n))
  return false
end

local function keep_on_wipe(f)
  local c = sub(f, 1, 1)
  return c == 'o' or c == 'k' or c == 'd'
end

-- cart items: counted on the first cart operation of the batch
local MAX_CART = 100 -- engine/layout.py MAX_CART_ITEMS
local cart_n = nil
local function cart_count()
  if cart_n == nil then
    cart_n = 0
    for f, _ in pairs(H) do
      if sub(f, 1, 2) == 'C:' then cart_n = cart_n + 1 end
    end
  end
  return cart_n
end

-- consent withdrawn: drop every behavioural field; keep offsets, consent flags and dedup tokens
local function wipe()
  for f, _ in pairs(H) do
    if not keep_on_wipe(f) then del(f) end
  end
  recents = {}
  aff_members = {}
  Ls = {}
  cart_n = nil
end

-- exposure records (engine/exposure.py): "<unclicked>,<mark>[,<t1>,...]", minutes in base 36, times oldest
-- first; per prefix (X: actions, Y: channels, P: purchased items) at most maxn records, a new one evicting the
-- record touched least recently; at most k times kept, none older than HORIZON before the newest
local HORIZON = 8 * 1440
local B36 = '0123456789abcdefghijklmnopqrstuvwxyz'
local function b36(n)
  if n <= 0 then return '0' end
  local s = ''
  while n > 0 do
    local r = n % 36
    s = sub(B36, r + 1, r + 1) .. s
    n = floor(n / 36)
  end
  return s
end
local function xparse(v)
  local u, m, ts = 0, nil, {}
  if v == nil then return u, m, ts end
  local i = 0
  for part in string.gmatch(v .. ',', '([^,]*),') do
    i = i + 1
    if i == 1 then
      u = tonumber(part) or 0
    elseif i == 2 then
      if part ~= '' then m = tonumber(part, 36) end
    elseif part ~= '' then
      ts[#ts + 1] = tonumber(part, 36)
    end
  end
  return u, m, ts
end
local function xformat(u, m, ts, k)
  table.sort(ts)
  local out = {int(u), m and b36(m) or ''}
  local n = #ts
  local newest = ts[n]
  for j = math.max(1, n - k + 1), n do
    if ts[j] >= newest - HORIZON then out[#out + 1] = b36(ts[j]) end
  end
  return table.concat(out, ',')
end
local function xlast(v)
  local _, m, ts = xparse(v)
  local t = ts[#ts] or -1
  if m ~= nil and m > t then t = m end
  return t
end
local function xfield(prefix, key, maxn, create)
  local f = prefix .. key
  if H[f] ~= nil then return f end
  if not create then return nil end
  local ms = members_of(prefix)
  if ms.n >= maxn then
    local lo_f, lo_t = nil, nil
    for g, _ in pairs(ms.set) do
      local t = xlast(H[g])
      if lo_f == nil or t < lo_t or (t == lo_t and g < lo_f) then lo_f, lo_t = g, t end
    end
    if lo_f ~= nil then
      del(lo_f)
      ms.set[lo_f] = nil
      ms.n = ms.n - 1
    end
  end
  ms.set[f] = true
  ms.n = ms.n + 1
  return f
end
local function exposure(kind, prefix, key, t, k, maxn)
  if kind == 'k' then -- a click: shown-without-click starts again (only for a record that exists)
    local f = xfield(prefix, key, maxn, false)
    if f ~= nil then
      local v = H[f]
      local comma = find(v, ',', 1, true)
      if comma ~= nil and sub(v, 1, comma - 1) ~= '0' then set(f, '0' .. sub(v, comma)) end
    end
    return
  end
  local f = xfield(prefix, key, maxn, true)
  local u, m, ts = xparse(H[f])
  if kind == 'm' or kind == 't' then -- an impression (t: on a channel, no shown-without-click count)
    ts[#ts + 1] = t
    if kind == 'm' then u = u + 1 end
  elseif kind == 'd' or kind == 'p' then -- a dismissal, a purchase: the later mark
    if m == nil or t > m then m = t end
  elseif kind == 'M' then -- a merge: t is the other profile's record
    local u2, m2, ts2 = xparse(t)
    u = u + u2
    if m2 ~= nil and (m == nil or m2 > m) then m = m2 end
    for _, x in ipairs(ts2) do ts[#ts + 1] = x end
  else
    error('unknown exposure kind ' .. tostring(kind))
  end
  set(f, xformat(u, m, ts, k))
end

-- operations: a code, then its arguments (ARITY of them); an unknown code is an error (it cannot be skipped)
local ARITY = {i = 2, a = 7, w = 4, r = 3, ra = 3, min = 2, max = 2, sess = 3, cart = 2, cartclear = 0, f = 2,
               set = 2, setnx = 2, z = 7, wipe = 0, kset = 3, kgate = 0, x = 6}
local A = batch
local p, nA = 1, #A
while p <= nA do
  local off, tok, consent, ets, nops = A[p], A[p + 1], A[p + 2], A[p + 3], A[p + 4]
  p = p + 5
  local fresh = off > stored
  if fresh and cutoff and ets <= cutoff then
    fresh = false
    blocked = true
  end
  if fresh and dedup_n > 0 and tok ~= '' then
    fresh = not seen(tok)
  end
  if fresh and consent ~= 1 and (H['kp'] == '0' or (opt_in and H['kp'] ~= '1')) then
    fresh = false
  end
  if not fresh then
    for _ = 1, nops do
      local n = ARITY[A[p]]
      if n == nil then error('unknown operation ' .. tostring(A[p])) end
      p = p + 1 + n
    end
  else
    applied = applied + 1
    local gated = false
    for _ = 1, nops do
      local c = A[p]
      if gated then c = 'skip' end
      if c == 'skip' then
        p = p + 1 + ARITY[A[p]]
      elseif c == 'i' then
        local f = A[p + 1]
        set(f, int((tonumber(H[f]) or 0) + A[p + 2]))
        p = p + 3
      elseif c == 'a' then
        -- a, prefix, value, weight, ts_s, half_life_s, top_k, landmark_field; a merge passes a score
        -- re-expressed at ts as the weight (identify), which is the same operation
        affinity(A[p + 1], A[p + 2], A[p + 3], A[p + 4], A[p + 5], A[p + 6], A[p + 7])
        p = p + 8
      elseif c == 'w' then
        -- w, field, bucket_index, n_slots, n
        window_add(A[p + 1], A[p + 2], A[p + 3], A[p + 4])
        p = p + 5
      elseif c == 'r' then
        -- r, prefix, value, size: most recent first, distinct, bounded
        recent_push(recent_list(A[p + 1]), A[p + 2], A[p + 3])
        p = p + 4
      elseif c == 'ra' then
        -- append an older value (profile merge) unless present or the list is full
        recent_append(recent_list(A[p + 1]), A[p + 2], A[p + 3])
        p = p + 4
      elseif c == 'min' or c == 'max' then
        local f, x = A[p + 1], A[p + 2]
        local v = tonumber(H[f])
        if v == nil or (c == 'min' and x < v) or (c == 'max' and x > v) then
          set(f, int(x))
        end
        p = p + 3
      elseif c == 'sess' then
        -- sess, ts_ms, session_id, timeout_ms: a gap longer than the timeout, or a new explicit
        -- session id, starts a new session
        local ts, sid, timeout = A[p + 1], A[p + 2], A[p + 3]
        local last = tonumber(H['sl'])
        if last == nil or ts - last > timeout or (sid ~= '' and sid ~= H['si']) then
          local t = int(ts)
          if sid == '' then sid = 's' .. t end
          set('si', sid)
          set('ss', t)
          set('sl', t)
          set('sp', '0')
        elseif ts > last then
          set('sl', int(ts))
        end
        p = p + 4
      elseif c == 'cart' then
        -- cart, field, quantity_delta; at most MAX_CART items (a new one beyond is not added)
        local f = A[p + 1]
        local had = H[f] ~= nil
        local q = (tonumber(H[f]) or 0) + A[p + 2]
        if q <= 0 then
          del(f)
          if had and cart_n then cart_n = cart_n - 1 end
        elseif had or cart_count() < MAX_CART then
          set(f, int(q))
          if not had then cart_n = cart_n + 1 end
        end
        p = p + 3
      elseif c == 'cartclear' then
        for f, _ in pairs(H) do
          if sub(f, 1, 2) == 'C:' then del(f) end
        end
        cart_n = 0
        p = p + 1
      elseif c == 'f' then
        local f = A[p + 1]
        set(f, fmt('%.15g', finite((tonumber(H[f]) or 0) + A[p + 2], f)))
        p = p + 3
      elseif c == 'set' then
        set(A[p + 1], tostring(A[p + 2]))
        p = p + 3
      elseif c == 'setnx' then
        local f = A[p + 1]
        if H[f] == nil then set(f, tostring(A[p + 2])) end
        p = p + 3
      elseif c == 'z' then
        -- popularity: z, key_index, member, weight, ts, half_life_s, top_k, landmark_field
        local ki, member = A[p + 1], A[p + 2]
        local e = rescale_zset(ki, A[p + 7], A[p + 4], A[p + 5])
        local pz = zpending[ki]
        if pz == nil then
          pz = {inc = {}, top_k = A[p + 6]}
          zpending[ki] = pz
        end
        pz.inc[member] = finite((pz.inc[member] or 0) + A[p + 3] * 2 ^ e, 'popularity')
        p = p + 8
      elseif c == 'x' then
        -- x, kind, prefix, key, minute (a merge: the other record), times kept, records kept (engine/exposure.py)
        exposure(A[p + 1], A[p + 2], A[p + 3], A[p + 4], A[p + 5], A[p + 6])
        p = p + 7
      elseif c == 'wipe' then
        wipe()
        p = p + 1
      elseif c == 'kset' then
        -- a merge's consent choice, made at ts: it wins over an older (or no) choice of this profile; a
        -- personalisation withdrawal that wins wipes the profile as the withdrawal itself did
        local f, v, ts = A[p + 1], A[p + 2], A[p + 3]
        if H[f] == nil or ts > (tonumber(H['kt']) or 0) then
          set(f, v)
          if f == 'kp' and v == '0' then wipe() end
        end
        p = p + 4
      elseif c == 'kgate' then
        -- the rest of this event is behavioural: only if the owner's consent allows it now
        gated = H['kp'] == '0' or (opt_in and H['kp'] ~= '1')
        p = p + 1
      else
        error('unknown operation ' .. tostring(c))
      end
    end
  end
  if off > max_off then max_off = off end
end

local want = ARGV[6]
local function reply(n, exists)
  if want == nil then return n end
  local out, k = {n, exists and 1 or 0}, 2
  if not exists then return out end
  local function put(f, v)
    if type(v) == 'number' then v = fmt('%.17g', v) end -- as HSET wrote it
    out[k + 1] = f
    out[k + 2] = v
    k = k + 2
  end
  for f in string.gmatch(want, '[^\31]+') do
    if H[f] ~= nil then put(f, H[f]) end
  end
  local pre = ARGV[7] or ''
  if pre ~= '' then
    local ps, first = {}, {} -- a field's first byte rules out most prefixes before any sub()
    for q in string.gmatch(pre, '[^\31]+') do
      ps[#ps + 1] = q
      first[byte(q, 1)] = true
    end
    for f, v in pairs(H) do
      if first[byte(f, 1)] then
        for i = 1, #ps do
          local q = ps[i]
          if sub(f, 1, #q) == q then
            put(f, v)
            break
          end
        end
      end
    end
  end
  return out
end

if not existed then
  -- a new hash: only what was applied creates it; opt_in: only a consent granted
  local granted = applied > 0
  if opt_in then
    granted = false
    for f, v in pairs(H) do
      if sub(f, 1, 1) == 'k' and v == '1' then granted = true end
    end
  end
  if not granted then return reply((blocked and applied == 0) and -1 or 0, false) end
end
for ki, _ in pairs(zpending) do zflush(ki) end
for prefix, r in pairs(recents) do write_recent(prefix, r) end
if max_off > stored then set(off_field, int(max_off)) end

local hset, hdel, ns, nd = {}, {}, 0, 0
for f, _ in pairs(dirty) do
  local v = H[f]
  if v == nil then
    nd = nd + 1
    hdel[nd] = f
  else
    hset[ns + 1] = f
    hset[ns + 2] = v
    ns = ns + 2
  end
end
if nd > 0 then redis.call('HDEL', h, unpack(hdel, 1, nd)) end
if ns > 0 then redis.call('HSET', h, unpack(hset, 1, ns)) end
if tonumber(ttl) > 0 then redis.call('EXPIRE', h, ttl) end
return reply((blocked and applied == 0) and -1 or applied, next(H) ~= nil)
