-- Give back what one earn took (revokeEarn, or an earn that ended up rejected).
-- KEYS[1] ready marker of the badge, KEYS[2] reservation hash of the earn's requestId.
-- Returns {'REBUILD'} | {'NONE'} | {'RELEASED'}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'REBUILD'}
end
local encoded = redis.call('HGET', KEYS[2], 'keys')
if not encoded then
  return {'NONE'}
end
local member = redis.call('HGET', KEYS[2], 'member')
for _, item in ipairs(cjson.decode(encoded)) do
  if item[1] == 'c' then
    if tonumber(redis.call('GET', item[2]) or '0') > 0 then redis.call('DECR', item[2]) end
  else
    redis.call('ZREM', item[2], member)
  end
end
redis.call('DEL', KEYS[2])
return {'RELEASED'}
