-- Rebuild step 2 of 4, repeated until it returns 0: delete a bounded batch of the badge's
-- old keys (every expiring key is in the expiry index), then the lifetime hash.
-- KEYS[1] rebuild lock, KEYS[2] expiry index, KEYS[3] lifetime hash.
-- ARGV[1] lock token, ARGV[2] lock ttl (ms), ARGV[3] batch size.
-- Returns the number of indexed keys left, or -1 when the lock is no longer ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local keys = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[3]) - 1)
if #keys > 0 then
  redis.call('UNLINK', unpack(keys))
  redis.call('ZREM', KEYS[2], unpack(keys))
end
local left = redis.call('ZCARD', KEYS[2])
if left == 0 then redis.call('UNLINK', KEYS[3]) end
return left
