-- A lock held by token (the rebuild lock, the cold lock).
-- KEYS[1] lock. ARGV[1] token, ARGV[2] 'refresh' | 'release', ARGV[3] ttl (ms) for refresh.
-- Returns 1 when the lock was ours.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'refresh' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return 1
