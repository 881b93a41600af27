-- Check and take every limit of one earn, all or nothing (docs/counters.md).
-- KEYS[1] badge state hash {run, gen, seq, clock, cold}, KEYS[2] reservation hash of this
-- requestId, KEYS[3] its release tombstone, KEYS[4] expiry index, KEYS[5] lifetime hash,
-- KEYS[6] cold lock, KEYS[7..] the distinct counters of the checks (fixed-window strings,
-- rolling-window zsets).
-- ARGV[1] member (requestId), ARGV[2] event date, ARGV[3] caller's clock ('' = none),
-- ARGV[4] how far the caller's clock may run ahead of Redis's, ARGV[5] retention,
-- ARGV[6] reservation ttl, ARGV[7] seq floor, ARGV[8] unused, ARGV[9] idle ttl,
-- ARGV[10] cold lock token ('' = none), ARGV[11] n checks, then 7 per check:
--   kind ('l' lifetime | 'c' fixed window | 'z' rolling), ref (field of the lifetime hash, or
--   index of the counter in KEYS), limit, bound (fixed: window end; rolling: exclusive lower
--   bound), roll (rolling: the longest length of the window, s), given count and given
--   blocking event ('' unless the caller decided this check from MongoDB under the cold lock).
-- KEYS may go on past the counters of the checks with the counters a provisional reservation
-- lists (the caller learns them from a KEYS reply): a script touches only keys it declares,
-- which is what Redis Cluster routes by.
-- Returns {'REBUILD', why} | {'LOCK'} | {'OK', 'NEW'|'DUP'|'CONFIRMED', seq, cold, count...}
--       | {'FULL', index, count, blocking, seq, cold} | {'STALE', seq, cold, clock, index...}
--       | {'KEYS', key...} (call again with these keys declared too).
-- OK's counts: one per check, its count right after this earn, this earn included (for the
-- earn's notification event); a DUP reads them without taking (a retry after a crash).
local floor = tonumber(ARGV[7])
local st, why = badge_state(KEYS[1], floor)
if not st then return {'REBUILD', why} end
local token = ARGV[10]
if token ~= '' and redis.call('GET', KEYS[6]) ~= token then return {'LOCK'} end

local member, ts = ARGV[1], tonumber(ARGV[2])
local retention, res_ttl = tonumber(ARGV[5]), tonumber(ARGV[6])
local index, life = KEYS[4], KEYS[5]

-- The counters' clock: never behind Redis's (so a key Redis expired is always one whose
-- window is over), moved ahead by the caller's clock by at most ARGV[4].
local now = server_now()
local clock = math.max(st.clock, now)
if ARGV[3] ~= '' then clock = math.max(clock, math.min(tonumber(ARGV[3]), now + tonumber(ARGV[4]))) end
if clock > st.clock then redis.call('HSET', KEYS[1], 'clock', clock) end


local r = redis.call('HMGET', KEYS[2], 'state', 'gen', 'keys')
local state = nil
if r[1] then
  if r[2] == st.gen then state = r[1] else redis.call('DEL', KEYS[2]) end  -- from before a rebuild
end
local n = tonumber(ARGV[11])
local function check_arg(i)
  local b = 11 + (i - 1) * 7
  local c = {kind = ARGV[b + 1], ref = ARGV[b + 2], limit = tonumber(ARGV[b + 3]), bound = ARGV[b + 4],
             roll = tonumber(ARGV[b + 5]) or 0, given = ARGV[b + 6], gblock = ARGV[b + 7]}
  if c.kind ~= 'l' then c.ref = KEYS[tonumber(c.ref)] end
  return c
end
local function stale_reply(stale)
  local reply = {'STALE', st.seq, st.cold, tostring(clock)}
  for _, i in ipairs(stale) do reply[#reply + 1] = i end
  return reply
end

if state == 'held' then
  -- Taken already: take nothing, only read the counts (they include this earn). A window
  -- past the retention horizon is not kept here: the caller counts it from MongoDB (STALE).
  local reply, stale = {'OK', 'DUP', st.seq, st.cold}, {}
  for i = 1, n do
    local c = check_arg(i)
    if c.given ~= '' then
      reply[#reply + 1] = tonumber(c.given) + 1  -- given counts leave this earn out
    elseif c.kind == 'l' then
      reply[#reply + 1] = tonumber(redis.call('HGET', life, c.ref) or '0')
    elseif c.kind == 'c' and tonumber(c.bound) + retention > clock then
      reply[#reply + 1] = tonumber(redis.call('GET', c.ref) or '0')
    elseif c.kind == 'z' and ts + retention > clock then
      reply[#reply + 1] = redis.call('ZCOUNT', c.ref, '(' .. c.bound, ts)
    else
      stale[#stale + 1] = i
    end
  end
  if #stale > 0 then return stale_reply(stale) end
  return reply
end
-- A provisional reservation was restored from a PENDING earn by a rebuild: it is already
-- counted in the keys it lists, so there it must fit with itself excluded, or give back.
local owned, own = {}, {}
if state == 'provisional' then
  owned = cjson.decode(r[3])
  local missing = undeclared(owned, 7)
  if missing then return missing end
  for _, item in ipairs(owned) do own[item[1] .. '|' .. item[2]] = true end
end
local function release_own()
  for _, item in ipairs(owned) do give_back(life, item, member) end
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', index, KEYS[2])
end

local checks, stale = {}, {}
for i = 1, n do
  local c = check_arg(i)
  checks[i] = c
  local count, blocking = nil, false
  if c.given ~= '' then
    count = tonumber(c.given)
    if c.gblock ~= '' then blocking = c.gblock end
  elseif c.kind == 'l' then
    count = tonumber(redis.call('HGET', life, c.ref) or '0')
  elseif c.kind == 'c' then
    if tonumber(c.bound) + retention <= clock then
      stale[#stale + 1] = i  -- the window ended before the retention horizon: not kept here
    else
      count = tonumber(redis.call('GET', c.ref) or '0')
    end
  else
    local keep_from = clock - retention - c.roll
    redis.call('ZREMRANGEBYSCORE', c.ref, '-inf', keep_from)  -- trim on every reserve
    if ts + retention <= clock then
      stale[#stale + 1] = i
    else
      count = redis.call('ZCOUNT', c.ref, '(' .. c.bound, ts)
    end
  end
  if count then
    if c.given == '' and own[c.kind .. '|' .. c.ref] then count = count - 1 end
    c.count = count  -- without this earn
    -- the first check that is full decides, unless an earlier one could not be read here
    if count >= c.limit and #stale == 0 then
      if c.kind == 'z' and c.given == '' then
        -- the event that has to leave the window before there is room again
        local w = redis.call('ZRANGEBYSCORE', c.ref, '(' .. c.bound, ts, 'WITHSCORES', 'LIMIT', count - c.limit, 1)
        if w[2] then blocking = w[2] end
      end
      if state == 'provisional' then release_own() end
      return {'FULL', i, count, blocking, st.seq, st.cold}
    end
  end
end
if #stale > 0 then return stale_reply(stale) end

-- Take: each key once per earn, however many checks name it.
local taken, seen = {}, {}
for _, item in ipairs(owned) do
  taken[#taken + 1] = item
  seen[item[1] .. '|' .. item[2]] = true
end
local used_cold = false
for _, c in ipairs(checks) do
  if c.given ~= '' then used_cold = true end
  local id = c.kind .. '|' .. c.ref
  if not seen[id] then
    seen[id] = true
    if c.kind == 'l' then
      redis.call('HINCRBY', life, c.ref, 1)
      taken[#taken + 1] = {'l', c.ref}
    elseif c.kind == 'c' then
      local e = tonumber(c.bound) + retention
      if e > clock then  -- a window past the horizon (decided from MongoDB) is not kept
        redis.call('INCR', c.ref)
        redis.call('EXPIREAT', c.ref, math.ceil(e))
        redis.call('ZADD', index, 'NX', e, c.ref)
        taken[#taken + 1] = {'c', c.ref}
      end
    else
      local keep_from = clock - retention - c.roll
      if ts > keep_from then  -- still inside some window a live check can look at
        redis.call('ZADD', c.ref, ts, member)
        local e = ts + c.roll + retention
        local cur = tonumber(redis.call('ZSCORE', index, c.ref))
        if not cur or e > cur then
          redis.call('ZADD', index, e, c.ref)
          cur = e
        end
        redis.call('EXPIREAT', c.ref, math.ceil(cur))
        taken[#taken + 1] = {'z', c.ref}
      end
    end
  end
end
local expires = clock + res_ttl
redis.call('HSET', KEYS[2], 'state', 'held', 'gen', st.gen, 'keys', cjson.encode(taken), 'member', member)
redis.call('EXPIREAT', KEYS[2], math.ceil(expires))
redis.call('ZADD', index, expires, KEYS[2])
if redis.call('DEL', KEYS[3]) == 1 then redis.call('ZREM', index, KEYS[3]) end
keep_index(index)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local cold = st.cold
if used_cold then cold = redis.call('HINCRBY', KEYS[1], 'cold', 1) end
local idle = tonumber(ARGV[9])
redis.call('EXPIRE', KEYS[1], idle)
redis.call('EXPIRE', life, idle)
local reply = {'OK', state == 'provisional' and 'CONFIRMED' or 'NEW', seq, cold}
for _, c in ipairs(checks) do reply[#reply + 1] = c.count + 1 end  -- each took this earn, once
return reply
