-- Rebuild step 3 of 4, once per chunk (the caller keeps chunks to a bounded number of
-- entries, so no call holds Redis for long): load counts computed from MongoDB.
-- KEYS[1] rebuild lock, KEYS[2] expiry index, KEYS[3] lifetime hash, KEYS[4..] every key
-- the chunk names (declared, as Redis Cluster requires; a key not declared is an error).
-- ARGV[1] lock token, ARGV[2] lock ttl (ms), ARGV[3] JSON chunk:
--   l = [[field, n]]                  lifetime counts
--   c = [[key, n, expires]]           fixed-window counters
--   z = [[key, expires, [score, member, ...], fresh]]   rolling-window entries (a set may span
--                                     chunks; fresh = 1 in its first one: drop what the key held)
--   r = [[key, state, gen, keys, member, expires]]   reservations of PENDING earns
--   t = [[key, gen, expires]]         release tombstones of recently revoked earns
-- Returns 1, or -1 when the lock is no longer ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local data = cjson.decode(ARGV[3])
local index, life = KEYS[2], KEYS[3]
local declared = {}
for i = 4, #KEYS do declared[KEYS[i]] = true end
for _, part in ipairs({data.c, data.z, data.r, data.t}) do
  for _, e in ipairs(part) do
    if not declared[e[1]] then return redis.error_reply('rebuild_load: undeclared key ' .. e[1]) end
  end
end
for _, e in ipairs(data.l) do redis.call('HSET', life, e[1], e[2]) end
for _, e in ipairs(data.c) do
  redis.call('SET', e[1], e[2], 'EXAT', math.ceil(e[3]))
  redis.call('ZADD', index, e[3], e[1])
end
for _, e in ipairs(data.z) do
  local entries = e[3]
  if e[4] == 1 then redis.call('DEL', e[1]) end
  for i = 1, #entries, 2 do redis.call('ZADD', e[1], entries[i], entries[i + 1]) end
  redis.call('EXPIREAT', e[1], math.ceil(e[2]))
  redis.call('ZADD', index, e[2], e[1])
end
for _, e in ipairs(data.r) do
  redis.call('DEL', e[1])
  redis.call('HSET', e[1], 'state', e[2], 'gen', e[3], 'keys', e[4], 'member', e[5])
  redis.call('EXPIREAT', e[1], math.ceil(e[6]))
  redis.call('ZADD', index, e[6], e[1])
end
for _, e in ipairs(data.t) do
  redis.call('SET', e[1], e[2], 'EXAT', math.ceil(e[3]))
  redis.call('ZADD', index, e[3], e[1])
end
return 1
