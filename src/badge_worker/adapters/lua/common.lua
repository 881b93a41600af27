-- Prepended to every script of this folder (redis_store._lua).
-- The run id of the Redis process running the script: a restart (even one that reloads an
-- AOF or RDB file that lacks the last writes), a restore from a backup or a failover to a
-- replica all change it, so a badge's counters are trusted only on the server that built them.
local function server_run()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end
-- Redis's own clock, epoch seconds.
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- The badge's state hash (KEYS[1] of reserve/release) when it can be trusted:
-- {gen, seq, clock, cold}, or nil and why not (MISSING | RUN | BEHIND).
local function badge_state(key, floor)
  local m = redis.call('HMGET', key, 'run', 'gen', 'seq', 'clock', 'cold')
  if not m[2] then return nil, 'MISSING' end
  if m[1] ~= server_run() then return nil, 'RUN' end
  local seq = tonumber(m[3]) or 0
  if seq < floor then return nil, 'BEHIND' end
  return {gen = m[2], seq = seq, clock = tonumber(m[4]) or 0, cold = tonumber(m[5]) or 0}
end
-- Give back one taken item {kind, ref}: 'l' a field of the lifetime hash, 'c' a fixed-window
-- counter (never recreated once expired), 'z' the member of a rolling set.
local function give_back(life, item, member)
  if item[1] == 'l' then
    if tonumber(redis.call('HGET', life, item[2]) or '0') > 0 then redis.call('HINCRBY', life, item[2], -1) end
  elseif item[1] == 'c' then
    if tonumber(redis.call('GET', item[2]) or '0') > 0 then redis.call('DECR', item[2]) end
  else
    redis.call('ZREM', item[2], member)
  end
end
-- Keep the expiry index (a zset: key -> logical expiry) alive as long as its latest member.
local function keep_index(index)
  local top = redis.call('ZRANGE', index, -1, -1, 'WITHSCORES')
  if top[2] then redis.call('EXPIREAT', index, math.ceil(tonumber(top[2]))) end
end
-- The counter keys a stored reservation lists ({kind, key} items) that this call does not
-- declare in KEYS[first..]: a script may touch only declared keys (Redis Cluster routes by
-- them), so it answers {'KEYS', key...} and the caller calls again with them. nil if none.
local function undeclared(items, first)
  local declared, missing = {}, {}
  for i = first, #KEYS do declared[KEYS[i]] = true end
  for _, item in ipairs(items) do
    if item[1] ~= 'l' and not declared[item[2]] then missing[#missing + 1] = item[2] end
  end
  if #missing == 0 then return nil end
  table.insert(missing, 1, 'KEYS')
  return missing
end
