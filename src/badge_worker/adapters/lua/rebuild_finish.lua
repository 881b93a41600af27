-- Rebuild step 4 of 4: publish the rebuilt counters (reserves and releases go on from here).
-- KEYS[1] rebuild lock, KEYS[2] badge state hash, KEYS[3] lifetime hash, KEYS[4] expiry index.
-- ARGV[1] lock token, ARGV[2] generation, ARGV[3] seq, ARGV[4] clock, ARGV[5] idle ttl.
-- Returns 1, or 0 when the lock is no longer ours (another process took over: start again).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'run', server_run(), 'gen', ARGV[2], 'seq', ARGV[3], 'clock', ARGV[4], 'cold', 0)
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[5])
keep_index(KEYS[4])
redis.call('DEL', KEYS[1])
return 1
