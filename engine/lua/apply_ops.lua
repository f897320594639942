-- Applies a batch of feature operations to ONE owner's keys (a customer, or the global popularity
-- owner) atomically and idempotently.
--
-- KEYS[1]  the owner's hash (offsets per partition, counters, landmarks); other KEYS are addressed
--          by index from the ops (zsets, lists, cart, window hash, dedup zset).
-- ARGV[1]  offset field, e.g. "off:events:3": events with an offset <= the stored one were applied
--          before (a replay after a crash) and are skipped.
-- ARGV[2]  TTL seconds for every key (0 = none).  ARGV[3] index of the dedup zset in KEYS (0 = none).
-- ARGV[4]  dedup window (event ids remembered).
-- ARGV[5]  JSON: [[offset, event_id, ts, ops, is_consent], ...]. While the owner has withdrawn consent
--          to personalisation, only consent events are applied (nothing behavioural is stored).
-- Returns the number of events applied.
local h = KEYS[1]
local off_field = ARGV[1]
local ttl = tonumber(ARGV[2])
local dedup_idx = tonumber(ARGV[3])
local dedup_window = tonumber(ARGV[4])
local batch = cjson.decode(ARGV[5])
local stored = tonumber(redis.call('HGET', h, off_field) or '-1')
local applied = 0
local max_off = stored

local function rescale(zkey, lfield, ts, hl)
  -- forward-decay landmark: scores are w * 2^((ts - L)/hl); move L forward before doubles overflow
  local L = tonumber(redis.call('HGET', h, lfield) or '')
  if L == nil then
    redis.call('HSET', h, lfield, ts)
    return 0
  end
  local e = (ts - L) / hl
  if e > 400 then
    local members = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
    local f = 2 ^ (-e)
    for i = 1, #members, 2 do
      redis.call('ZADD', zkey, tonumber(members[i + 1]) * f, members[i])
    end
    redis.call('HSET', h, lfield, ts)
    return 0
  end
  return e
end

local function window_add(wkey, prefix, idx, nslots, n, merge)
  local field = prefix .. ':' .. (idx % nslots)
  local cur = redis.call('HGET', wkey, field)
  if cur then
    local sep = string.find(cur, ':', 1, true)
    local cidx = tonumber(string.sub(cur, 1, sep - 1))
    local cnt = tonumber(string.sub(cur, sep + 1))
    if cidx == idx then
      redis.call('HSET', wkey, field, idx .. ':' .. (cnt + n))
      return
    elseif merge and cidx > idx then
      return
    end
  end
  redis.call('HSET', wkey, field, idx .. ':' .. n)
end

for _, ev in ipairs(batch) do
  local off = ev[1]
  local fresh = off > stored
  if fresh and dedup_idx > 0 and ev[2] ~= '' then
    -- whole seconds as the score: listpack stores small integers in a few bytes
    fresh = redis.call('ZADD', KEYS[dedup_idx], 'NX', math.floor(ev[3]), ev[2]) == 1
  end
  if fresh and ev[5] ~= 1 and redis.call('HGET', h, 'consent_personalisation') == '0' then
    fresh = false
  end
  if fresh then
    applied = applied + 1
    for _, op in ipairs(ev[4]) do
      local c = op[1]
      if c == 'i' then
        redis.call('HINCRBY', h, op[2], op[3])
      elseif c == 'f' then
        redis.call('HINCRBYFLOAT', h, op[2], op[3])
      elseif c == 'set' then
        redis.call('HSET', h, op[2], op[3])
      elseif c == 'setnx' then
        redis.call('HSETNX', h, op[2], op[3])
      elseif c == 'min' or c == 'max' then
        local v = tonumber(redis.call('HGET', h, op[2]) or '')
        if v == nil or (c == 'min' and op[3] < v) or (c == 'max' and op[3] > v) then
          redis.call('HSET', h, op[2], op[3])
        end
      elseif c == 'sess' then
        -- ["sess", ts, session_id, timeout_s]: a gap longer than the timeout, or a new explicit
        -- session id, starts a new session
        local ts, sid, timeout = op[2], op[3], op[4]
        local last = tonumber(redis.call('HGET', h, 'sess_last') or '')
        local cur = redis.call('HGET', h, 'sess_id')
        if last == nil or ts - last > timeout or (sid ~= '' and sid ~= cur) then
          if sid == '' then sid = 's' .. string.format('%d', ts * 1000) end
          redis.call('HSET', h, 'sess_id', sid, 'sess_start', ts, 'sess_last', ts, 'sess_pages', 0)
        elseif ts > last then
          redis.call('HSET', h, 'sess_last', ts)
        end
      elseif c == 'z' or c == 'zm' then
        -- ["z", key_index, member, weight, ts, half_life_s, top_k, landmark_field]; "zm" merges a
        -- score from another profile re-expressed at ts (identify), which is the same operation
        local zkey = KEYS[op[2]]
        local e = rescale(zkey, op[8], op[5], op[6])
        redis.call('ZINCRBY', zkey, op[4] * 2 ^ e, op[3])
        local n = redis.call('ZCARD', zkey)
        if n > op[7] then
          redis.call('ZREMRANGEBYRANK', zkey, 0, n - op[7] - 1)
        end
      elseif c == 'r' then
        -- ["r", key_index, value, size]: most recent first, distinct, bounded
        local lkey = KEYS[op[2]]
        redis.call('LREM', lkey, 0, op[3])
        redis.call('LPUSH', lkey, op[3])
        redis.call('LTRIM', lkey, 0, op[4] - 1)
      elseif c == 'ra' then
        -- append an older value (profile merge) unless present or the list is full
        local lkey = KEYS[op[2]]
        if redis.call('LLEN', lkey) < op[4] and not redis.call('LPOS', lkey, op[3]) then
          redis.call('RPUSH', lkey, op[3])
        end
      elseif c == 'cart' then
        -- ["cart", key_index, item, quantity_delta]
        local q = redis.call('HINCRBY', KEYS[op[2]], op[3], op[4])
        if q <= 0 then redis.call('HDEL', KEYS[op[2]], op[3]) end
      elseif c == 'wipe' then
        -- consent withdrawn: drop every behavioural key and field, keep offsets and consent flags
        for i = 2, #KEYS do
          if i ~= dedup_idx then redis.call('DEL', KEYS[i]) end
        end
        local fields = redis.call('HKEYS', h)
        for _, f in ipairs(fields) do
          if string.sub(f, 1, 4) ~= 'off:' and string.sub(f, 1, 8) ~= 'consent_' then
            redis.call('HDEL', h, f)
          end
        end
      elseif c == 'cartclear' then
        redis.call('DEL', KEYS[op[2]])
      elseif c == 'w' or c == 'wm' then
        -- ["w", key_index, prefix, bucket_index, n_slots, n]: ring buffer of time buckets
        window_add(KEYS[op[2]], op[3], op[4], op[5], op[6], c == 'wm')
      end
    end
  end
  if off > max_off then max_off = off end
end

if max_off > stored then
  redis.call('HSET', h, off_field, max_off)
end
if dedup_idx > 0 then
  local n = redis.call('ZCARD', KEYS[dedup_idx])
  if n > dedup_window then
    redis.call('ZREMRANGEBYRANK', KEYS[dedup_idx], 0, n - dedup_window - 1)
  end
end
if ttl > 0 then
  for i = 1, #KEYS do
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end
return applied
