-- Start rebuilding one badge's counters from MongoDB (step 1 of 4; docs/counters.md).
-- KEYS[1] badge state hash, KEYS[2] rebuild lock.
-- ARGV[1] lock token, ARGV[2] lock ttl (ms), ARGV[3] seq floor, ARGV[4] '1' = even if valid.
-- Returns {'READY'} (the counters are there and trusted: nothing to do) | {'BUSY'} (another
-- process is rebuilding; wait for the state hash) | {'GO', seq, clock, server time}: the lock
-- is ours and the state hash is gone, so every reserve and release waits until step 4.
local m = redis.call('HMGET', KEYS[1], 'run', 'gen', 'seq', 'clock')
if m[2] and m[1] == server_run() and (tonumber(m[3]) or 0) >= tonumber(ARGV[3]) and ARGV[4] ~= '1' then
  return {'READY'}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'BUSY'}
end
redis.call('DEL', KEYS[1])
return {'GO', m[3] or '0', m[4] or '0', tostring(server_now())}
