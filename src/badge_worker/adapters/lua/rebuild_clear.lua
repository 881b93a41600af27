-- Rebuild step 2 of 4, repeated until it returns 0 left: delete the badge's old keys (every
-- expiring key is in the expiry index), a bounded batch per call, then the lifetime hash.
-- The keys to delete are declared: each call names the next batch, which the caller declares
-- in the following call (so the script works on Redis Cluster, which routes by KEYS).
-- KEYS[1] rebuild lock, KEYS[2] expiry index, KEYS[3] lifetime hash, KEYS[4..] the batch
-- the previous call named.
-- ARGV[1] lock token, ARGV[2] lock ttl (ms), ARGV[3] batch size.
-- Returns {left, next key...}: left = indexed keys still there (the next batch among them),
-- or {-1} when the lock is no longer ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if #KEYS > 3 then
  local batch = {unpack(KEYS, 4)}
  redis.call('UNLINK', unpack(batch))
  redis.call('ZREM', KEYS[2], unpack(batch))
end
local left = redis.call('ZCARD', KEYS[2])
if left == 0 then
  redis.call('UNLINK', KEYS[3])
  return {0}
end
local reply = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[3]) - 1)
table.insert(reply, 1, left)
return reply
