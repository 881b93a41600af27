-- Give back what one earn took (revokeEarn, or an earn that ended up rejected), once.
-- KEYS[1] badge state hash, KEYS[2] reservation hash of the earn's requestId, KEYS[3] its
-- release tombstone, KEYS[4] expiry index, KEYS[5] lifetime hash, KEYS[6..] the counters
-- named by ARGV (used only when the reservation has expired), then any counter the
-- reservation lists that ARGV does not (the caller learns them from a KEYS reply).
-- ARGV[1] member (requestId), ARGV[2] seq floor, ARGV[3] tombstone ttl, ARGV[4] n items,
-- then 2 per item: kind ('l' | 'c' | 'z'), ref (field of the lifetime hash, or key index).
-- The items are the earn's stored counters (earned badge `limits`): a revokeEarn long after
-- the earn, when its reservation is gone, still gives back the counts that are live.
-- Returns {'REBUILD', why} | {'DONE', seq} (released before) | {'NONE', seq} (nothing
-- recorded, no items given) | {'RELEASED', seq} | {'KEYS', key...} (call again with these
-- keys declared too; nothing was changed).
local st, why = badge_state(KEYS[1], tonumber(ARGV[2]))
if not st then return {'REBUILD', why} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'DONE', st.seq} end
local member, index, life = ARGV[1], KEYS[4], KEYS[5]
local items = nil
local r = redis.call('HMGET', KEYS[2], 'state', 'gen', 'keys')
if r[1] then
  if r[2] == st.gen then
    items = cjson.decode(r[3])
    local missing = undeclared(items, 6)
    if missing then return missing end
  end
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', index, KEYS[2])
end
local n = tonumber(ARGV[4])
if not items and n > 0 then
  items = {}
  for i = 1, n do
    local kind, ref = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
    if kind ~= 'l' then ref = KEYS[tonumber(ref)] end
    items[i] = {kind, ref}
  end
end
if not items then return {'NONE', st.seq} end
local seen = {}
for _, item in ipairs(items) do
  local id = item[1] .. '|' .. item[2]
  if not seen[id] then
    seen[id] = true
    give_back(life, item, member)
  end
end
local clock = math.max(st.clock, server_now())
local expires = clock + tonumber(ARGV[3])
redis.call('SET', KEYS[3], st.gen, 'EXAT', math.ceil(expires))
redis.call('ZADD', index, expires, KEYS[3])
keep_index(index)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HINCRBY', KEYS[1], 'cold', 1)
return {'RELEASED', seq}
