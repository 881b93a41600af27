"""Every Redis key prefix and MongoDB collection name, in one place.

All keys that one Lua call touches share the hash tag {org:badge}, so the scripts also
work on Redis Cluster.
"""

from __future__ import annotations

KEY_PREFIX = "bw"

# requestId -> origin ("topic/partition/offset") of the first message that used it
REQUEST_KEY = "{prefix}:req:{org}:{request_id}"
REQUEST_TTL_SECONDS = 14 * 24 * 3600  # the MongoDB ledger is the truth beyond this
# the outcome of that first message, for a while (adapters/request_cache.py)
OUTCOME_KEY = "{prefix}:out:{org}:{request_id}"

# Limit counters: every key of a badge shares the hash tag {org:badge}. Lifetimes, the
# retention horizon and the repair of a lost or rolled-back Redis: docs/counters.md.
# per badge, the "ready marker": hash {run, gen, seq, clock, cold}, written once its counters
# were rebuilt from MongoDB; absent (or from another Redis run_id, or behind a seq this process
# saw) = rebuild first. Expires after BADGE_IDLE_TTL_SECONDS without a reserve.
READY_KEY = "{prefix}:{{{org}:{badge}}}:meta"
# one fixed-window counter (string) or rolling-window set (zset) per window; expires with its window
COUNTER_KEY = "{prefix}:{{{org}:{badge}}}:cnt:{counter}"
# lifetime caps: hash counter name -> count, kept (and expiring) with the ready marker
LIFETIME_KEY = "{prefix}:{{{org}:{badge}}}:life"
# what one earn (by requestId) took: hash {state, gen, keys, member}; RESERVATION_TTL_SECONDS
RESERVATION_KEY = "{prefix}:{{{org}:{badge}}}:res:{request_id}"  # {request_id} last (redis_store._BadgeKeys)
# tombstone of a released earn (no second release); RELEASED_TTL_SECONDS
RELEASED_KEY = "{prefix}:{{{org}:{badge}}}:rel:{request_id}"
# zset: every expiring key of the badge -> when it can no longer matter (counters' clock)
EXPIRY_INDEX_KEY = "{prefix}:{{{org}:{badge}}}:exp"
# locks (token values): one rebuilder per badge; one decider of windows past the horizon
REBUILD_LOCK_KEY = "{prefix}:{{{org}:{badge}}}:lock:rebuild"
COLD_LOCK_KEY = "{prefix}:{{{org}:{badge}}}:lock:cold"

# A window is kept this long after it ends (a rolling entry: after the longest window holding
# it ends). An earn dated further back than this before the counters' clock is checked
# against MongoDB instead, under the cold lock (service/counters.py).
COUNTER_RETENTION_SECONDS = 14 * 24 * 3600
RESERVATION_TTL_SECONDS = 3600  # a retry (redelivery after a crash) comes well within this
RELEASED_TTL_SECONDS = 2 * 24 * 3600  # a redelivered revokeEarn comes well within this
BADGE_IDLE_TTL_SECONDS = 45 * 24 * 3600  # a badge unused this long is rebuilt on next use
CLOCK_MAX_AHEAD_SECONDS = 0.0  # how far a caller's clock may run the counters' clock ahead of Redis's
GC_BATCH = 32  # keys whose time has come collected per reserve, at most (gc.lua)
GC_EVERY = 16  # a process collects a badge's keys once per this many of its reserves
REBUILD_CHUNK = 500  # entries per rebuild call, at most
COUNTER_LOCK_TTL_MS = 30_000  # rebuild / cold locks; refreshed while held
SEQ_GENERATION = 1_000_000_000  # a rebuild starts the badge's seq at the next multiple of this
COUNTER_MARK_INTERVAL_SECONDS = 5.0  # a process writes a badge's seq watermark at most this often

# MongoDB collections
BADGES = "badges"
BADGE_CLAIMS = "badge_claims"  # one document per (badge, ownerType, referenceId): see Repositories.upsert_badge
REQUESTS = "requests"  # the requestId ledger: which message (origin) first used each requestId
OUTCOMES = "outcomes"  # the first outcome of each ledger entry, under the entry's _id
ISSUES = "issues"
EARNED = "earned_badges"
INTENTS = "earn_intents"  # an earn about to take its limits (see adapters/mongo.py)
REJECTIONS = "earn_rejections"  # an intent whose earn was refused (same _id as the intent)
# Every ledger entry, stored outcome, intent, earned badge and rejection of an earn carries
# the block of its message: "topic/partition/(offset // ORIGIN_BLOCK_OFFSETS)". A restart reads
# what the killed worker left by block, a filter FerretDB hands to PostgreSQL (a requestId $in
# makes it decode and compare every document of the collection). A batch of 500 spans <= 3.
ORIGIN_BLOCK_FIELD = "originBlock"
ORIGIN_BLOCK_OFFSETS = 256
COUNTER_MARKS = "counter_marks"  # per badge (_id "org:badge"): the highest counter seq seen (watermark)
SETTINGS = "settings"  # process-wide values shared by workers and operator tools
REPLAY_KEY_ID = "replay-signing-key"
API_KEYS = "api_keys"  # one per key of the read API (_id = key id); only a hash of the secret (api/keys.py)
CUSTOMERS = "customers"  # the customer registry (_id "org:customerId"), for X-CAP-CUSTOMER-IDENTIFIER
CUSTOMER_IDENTIFIERS = "customer_identifiers"  # _id "org|type|value" -> customerId, unique per org
DLQ_REPLAYS = "dlq_replays"  # one mark per DLQ record `dlq replay` re-published (service/replay.py)

# Kafka headers written on outcomes, DLQ records and replays
H_INPUT_TOPIC = "x-input-topic"
H_INPUT_PARTITION = "x-input-partition"
H_INPUT_OFFSET = "x-input-offset"
H_ERROR_CODE = "x-error-code"
H_ERROR_MESSAGE = "x-error-message"
H_ORIGINAL_TIMESTAMP = "x-original-timestamp"
H_REPLAY_OF = "x-replay-of"  # "topic/partition/offset" of the original message
H_REPLAY_SIGNATURE = "x-replay-signature"  # proof that `dlq replay` wrote the two above
H_TRUNCATED = "x-truncated"  # an output cut to fit the topic: the original key/value sizes
H_ERROR_TYPE = "x-error-type"  # DLQ: the exception class of a 500
