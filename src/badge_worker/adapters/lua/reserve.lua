-- Check and take every limit of one earn, all or nothing.
-- KEYS[1] ready marker of the badge, KEYS[2] reservation hash of this requestId,
-- KEYS[3..] one counter per check.
-- ARGV[1] event date (epoch s), ARGV[2] member (requestId), ARGV[3] n checks,
-- then per check: kind ('c' counter | 'z' rolling set), limit, lower bound (exclusive).
-- Returns {'REBUILD'} | {'OK', 'NEW'|'DUP'|'CONFIRMED'} | {'FULL', index, count, blocking}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'REBUILD'}
end
local ts, member, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'held' then
  return {'OK', 'DUP'}
end
-- A provisional reservation was restored from a PENDING earn by a rebuild: it is already
-- counted, so it must fit with itself excluded, or give its counts back.
local own = 0
if state == 'provisional' then own = 1 end

-- The same loop as release.lua: a script cannot call another, and giving back a provisional
-- earn must happen inside this call to stay atomic.
local function release_own()
  local taken = cjson.decode(redis.call('HGET', KEYS[2], 'keys'))
  for _, item in ipairs(taken) do
    if item[1] == 'c' then
      if tonumber(redis.call('GET', item[2]) or '0') > 0 then redis.call('DECR', item[2]) end
    else
      redis.call('ZREM', item[2], member)
    end
  end
  redis.call('DEL', KEYS[2])
end

for i = 1, n do
  local base = 3 + (i - 1) * 3
  local kind, limit, lo = ARGV[base + 1], tonumber(ARGV[base + 2]), ARGV[base + 3]
  local key = KEYS[2 + i]
  local count
  if kind == 'c' then
    count = tonumber(redis.call('GET', key) or '0')
  else
    count = redis.call('ZCOUNT', key, '(' .. lo, ts)
  end
  count = count - own
  if count >= limit then
    local blocking = false
    if kind == 'z' then
      -- the event that has to leave the window before there is room again
      local r = redis.call('ZRANGEBYSCORE', key, '(' .. lo, ts, 'WITHSCORES', 'LIMIT', count - limit, 1)
      if r[2] then blocking = r[2] end
    end
    if own == 1 then release_own() end
    return {'FULL', i, count, blocking}
  end
end

if own == 1 then
  redis.call('HSET', KEYS[2], 'state', 'held')
  return {'OK', 'CONFIRMED'}
end
local taken = {}
for i = 1, n do
  local base = 3 + (i - 1) * 3
  local kind, key = ARGV[base + 1], KEYS[2 + i]
  if kind == 'c' then
    redis.call('INCR', key)
  else
    redis.call('ZADD', key, ts, member)
  end
  taken[i] = {kind, key}
end
redis.call('HSET', KEYS[2], 'state', 'held', 'keys', cjson.encode(taken), 'member', member)
return {'OK', 'NEW'}
