-- Collect the badge's keys whose time has come on the counters' clock (docs/counters.md),
-- a bounded batch per call. The keys to delete are declared: each call names the next
-- candidates, which the caller declares in a following call (Redis Cluster routes by KEYS).
-- A candidate is deleted only if the index still gives it a time at or before the clock (a
-- rebuild may have reloaded it since). Nothing is done while the badge is being rebuilt.
-- KEYS[1] badge state hash, KEYS[2] expiry index, KEYS[3..] candidates of an earlier call.
-- ARGV[1] how many candidates to name, at most.
-- Returns {deleted, candidate...}.
if redis.call('HEXISTS', KEYS[1], 'gen') == 0 then return {0} end
local clock = math.max(tonumber(redis.call('HGET', KEYS[1], 'clock')) or 0, server_now())
local deleted = 0
for i = 3, #KEYS do
  local due = redis.call('ZSCORE', KEYS[2], KEYS[i])
  if due and tonumber(due) <= clock then
    redis.call('UNLINK', KEYS[i])
    redis.call('ZREM', KEYS[2], KEYS[i])
    deleted = deleted + 1
  end
end
local reply = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', clock, 'LIMIT', 0, tonumber(ARGV[1]))
table.insert(reply, 1, deleted)
return reply
