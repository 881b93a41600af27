-- Give back a provisional reservation: one a rebuild restored from a PENDING intent whose
-- earn had been refused just before (its rejection marker was not in MongoDB yet when the
-- rebuild read). That earn will not reserve again, so nobody else confirms the reservation
-- or gives it back. Any other reservation (held: a newer run of the same earn took it) is
-- left alone.
-- KEYS[1] badge state hash, KEYS[2] reservation hash of the earn's requestId, KEYS[3] expiry
-- index, KEYS[4] lifetime hash, then the counters the reservation lists (the caller learns
-- them from a KEYS reply).
-- ARGV[1] member (requestId), ARGV[2] seq floor.
-- Returns {'REBUILD', why} | {'NONE', seq} | {'RELEASED', seq} | {'KEYS', key...}.
local st, why = badge_state(KEYS[1], tonumber(ARGV[2]))
if not st then return {'REBUILD', why} end
local r = redis.call('HMGET', KEYS[2], 'state', 'gen', 'keys')
if r[1] ~= 'provisional' or r[2] ~= st.gen then return {'NONE', st.seq} end
local items = cjson.decode(r[3])
local missing = undeclared(items, 5)
if missing then return missing end
for _, item in ipairs(items) do give_back(KEYS[4], item, ARGV[1]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], KEYS[2])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HINCRBY', KEYS[1], 'cold', 1)
return {'RELEASED', seq}
