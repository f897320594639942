-- The reward join: a decision waits for its rewards, within a window, exactly once.
--
-- State of one decision: hash KEYS[1] = "dec:{<slot>}:<decision_id>" with fields
--   record (the decision record JSON, once the decisions topic delivered it), expires_at,
--   reward (aggregated value), n (rewards counted), clicked, converted, final ("1" once its reward is
--   fixed and its learning example sent: later rewards are late), settled ("1" once Kafka acknowledged
--   that example), "e:<event_id>" (reward events already counted: duplicates are ignored).
-- KEYS[2] = "due:{<slot>}": zset of decision ids by expiry time; a final decision stays in it, scored by
--   its lease, until it is settled: if the worker dies before Kafka acknowledged the example, the next
--   expiry after the lease sends it again (same decision id and reward; the learner learns a decision once).
--
-- ARGV[1] = mode:
--   "decision": ARGV[2] decision id, ARGV[3] record JSON, ARGV[4] expires_at, ARGV[5] ttl,
--               ARGV[6] aggregation, ARGV[7] lease deadline.
--               Returns {status, reward, clicked_early, converted_early, "1"}
--   "reward":   ARGV[2] decision id, ARGV[3] event_id, ARGV[4] value, ARGV[5] kind, ARGV[6] ttl,
--               ARGV[7] aggregation, ARGV[8] lease deadline.
--               Returns {status, reward, clicked, converted, record, new_click, new_conv}
--   "expire":   KEYS[1] = "due:{<slot>}", KEYS[1 + i] = "dec:{<slot>}:<ARGV[3 + i]>" (the ids a ZRANGEBYSCORE
--               of the due zset found: every key is declared, all in the slot's hash tag); ARGV[2] now,
--               ARGV[3] lease seconds, ARGV[4..] the decision ids. An id no longer due (another worker took
--               it meanwhile) is left alone.
--               Returns a flat list {id, record, reward_or_"", clicked, converted, ...} of decisions to learn
--               (again, for a final one whose lease ran out unsettled)
--   "settled":  ARGV[2] decision id. Returns 1 if it was settled now, 0 if before (or gone).
--   "shown":    ARGV[2] decision id, ARGV[3] ttl. An impression: field "shown" set once per decision (a
--               repeated impression or a redelivered event counts once). Returns 1 the first time, else 0.
-- status: "final" (learn now), "pending", "late" (already learned), "duplicate".
local mode = ARGV[1]
local EARLY_TTL = 300 -- engine/learning_store.py EARLY_REWARD_TTL_S

local function finalize(key, due, id, lease_until)
  redis.call('HSET', key, 'final', '1')
  redis.call('ZADD', due, lease_until, id)
  local v = redis.call('HMGET', key, 'record', 'reward', 'clicked', 'converted')
  return v
end

local function finite(x)
  return x ~= nil and x == x and x ~= math.huge and x ~= -math.huge
end

if mode == 'expire' then
  local due = KEYS[1]
  local now = tonumber(ARGV[2])
  local lease_until = now + tonumber(ARGV[3])
  local out = {}
  for i = 4, #ARGV do
    local id, key = ARGV[i], KEYS[i - 2]
    local score = tonumber(redis.call('ZSCORE', due, id))
    -- gone or re-leased since it was read (another worker's): left alone
    if score ~= nil and score <= now then
      local st = redis.call('HMGET', key, 'record', 'settled')
      if st[1] and st[2] ~= '1' then
        local v = finalize(key, due, id, lease_until)
        table.insert(out, id)
        table.insert(out, v[1])
        table.insert(out, v[2] or '')
        table.insert(out, v[3] or '0')
        table.insert(out, v[4] or '0')
      else
        redis.call('ZREM', due, id)
      end
    end
  end
  return out
end

local key, due = KEYS[1], KEYS[2]
if mode == 'settled' then
  redis.call('ZREM', due, ARGV[2])
  if redis.call('EXISTS', key) == 1 and redis.call('HSETNX', key, 'settled', '1') == 1 then return 1 end
  return 0
end
if mode == 'shown' then
  if redis.call('HSETNX', key, 'shown', '1') == 0 then return 0 end
  -- before its record: kept as long as an early reward (EARLY_TTL); the record's arrival sets the window's TTL
  if redis.call('TTL', key) < 0 then
    local ttl = tonumber(ARGV[3])
    if redis.call('HEXISTS', key, 'record') == 0 then ttl = math.min(EARLY_TTL, ttl) end
    redis.call('EXPIRE', key, ttl)
  end
  return 1
end
local final = redis.call('HGET', key, 'final') == '1'

if mode == 'decision' then
  if final then return {'late', '', '0', '0', '0'} end
  local is_new = redis.call('HSETNX', key, 'record', ARGV[3])
  if is_new == 0 then return {'duplicate', '', '0', '0', '0'} end
  redis.call('HSET', key, 'expires_at', ARGV[4], 'agg', ARGV[6])
  redis.call('EXPIRE', key, tonumber(ARGV[5]))
  -- rewards that arrived before the record are attributed to its arm now
  local early = redis.call('HMGET', key, 'clicked', 'converted')
  local has_reward = redis.call('HEXISTS', key, 'reward') == 1
  if ARGV[6] == 'first' and has_reward then
    local v = finalize(key, due, ARGV[2], ARGV[7])
    return {'final', v[2], early[1] or '0', early[2] or '0', '1'}
  end
  redis.call('ZADD', due, 'NX', ARGV[4], ARGV[2])
  return {'pending', '', early[1] or '0', early[2] or '0', '1'}
end

-- mode == 'reward'
if final then return {'late', '', '0', '0', redis.call('HGET', key, 'record') or '', '0', '0'} end
local value = tonumber(ARGV[4])
if not finite(value) then return redis.error_reply('reward value is not a finite number: ' .. ARGV[4]) end
if redis.call('HSETNX', key, 'e:' .. ARGV[3], '1') == 0 then
  return {'duplicate', '', '0', '0', '', '0', '0'}
end
local agg = redis.call('HGET', key, 'agg') or ARGV[7]  -- the decision's own placement setting
local cur = tonumber(redis.call('HGET', key, 'reward') or '')
if cur == nil then
  redis.call('HSET', key, 'reward', value)
elseif agg == 'sum' and finite(cur + value) then
  redis.call('HSET', key, 'reward', cur + value)
elseif agg == 'max' and value > cur then
  redis.call('HSET', key, 'reward', value)
end
redis.call('HINCRBY', key, 'n', 1)
local new_click, new_conv = '0', '0'
if ARGV[5] == 'click' and redis.call('HSETNX', key, 'clicked', '1') == 1 then new_click = '1' end
if ARGV[5] == 'conversion' and redis.call('HSETNX', key, 'converted', '1') == 1 then new_conv = '1' end
local record = redis.call('HGET', key, 'record') or ''
-- a reward that arrives before its decision record keeps the state alive for EARLY_TTL, time enough for the
-- record to come (it follows within a second); a decision_id no API served leaves nothing behind for longer
if record == '' then
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, math.min(EARLY_TTL, tonumber(ARGV[6]))) end
elseif redis.call('TTL', key) < 0 then
  redis.call('EXPIRE', key, tonumber(ARGV[6]))
end
if agg == 'first' and record ~= '' then
  local v = finalize(key, due, ARGV[2], ARGV[8])
  return {'final', v[2], v[3] or '0', v[4] or '0', v[1], new_click, new_conv}
end
return {'pending', '', '0', '0', record, new_click, new_conv}
