-- Restore one badge's counters from MongoDB (the truth) after Redis lost them.
-- KEYS[1] ready marker. ARGV[1] JSON {counters = {key: n}, zsets = {key: [[score, member]]},
-- reservations = {key: {state, keys, member}}}.
-- Applied only while the marker is absent: a slower rebuilder whose snapshot may predate
-- earns taken since the first rebuild must not overwrite their counts.
-- Returns 1 when applied, 0 when another rebuild won.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local data = cjson.decode(ARGV[1])
for key, n in pairs(data.counters) do
  redis.call('SET', key, n)
end
for key, entries in pairs(data.zsets) do
  redis.call('DEL', key)
  for _, e in ipairs(entries) do
    redis.call('ZADD', key, e[1], e[2])
  end
end
for key, r in pairs(data.reservations) do
  redis.call('DEL', key)
  redis.call('HSET', key, 'state', r.state, 'keys', r.keys, 'member', r.member)
end
redis.call('SET', KEYS[1], '1')
return 1
