"""Every Redis key prefix and MongoDB collection name, in one place.

All keys that one Lua call touches share the hash tag {org:badge}, so the scripts also
work on Redis Cluster.
"""

from __future__ import annotations

KEY_PREFIX = "bw"

# requestId -> origin ("topic/partition/offset") of the first message that used it
REQUEST_KEY = "{prefix}:req:{org}:{request_id}"
REQUEST_TTL_SECONDS = 14 * 24 * 3600  # the MongoDB ledger is the truth beyond this

# per badge: set once its counters were rebuilt from MongoDB; absent = rebuild first
READY_KEY = "{prefix}:{{{org}:{badge}}}:ready"
# one counter (string) or rolling-window set (zset) per limit window
COUNTER_KEY = "{prefix}:{{{org}:{badge}}}:cnt:{counter}"
# what one earn (by requestId) took: hash {state, keys, member}
RESERVATION_KEY = "{prefix}:{{{org}:{badge}}}:res:{request_id}"

# MongoDB collections
BADGES = "badges"
REQUESTS = "requests"  # the requestId ledger: which message (origin) first used each requestId
OUTCOMES = "outcomes"  # the first outcome of each ledger entry, under the entry's _id
ISSUES = "issues"
EARNED = "earned_badges"
INTENTS = "earn_intents"  # an earn about to take its limits (see adapters/mongo.py)
SETTINGS = "settings"  # process-wide values shared by workers and operator tools
REPLAY_KEY_ID = "replay-signing-key"

# Kafka headers written on outcomes, DLQ records and replays
H_INPUT_TOPIC = "x-input-topic"
H_INPUT_PARTITION = "x-input-partition"
H_INPUT_OFFSET = "x-input-offset"
H_ERROR_CODE = "x-error-code"
H_ERROR_MESSAGE = "x-error-message"
H_ORIGINAL_TIMESTAMP = "x-original-timestamp"
H_REPLAY_OF = "x-replay-of"  # "topic/partition/offset" of the original message
H_REPLAY_SIGNATURE = "x-replay-signature"  # proof that `dlq replay` wrote the two above
H_ERROR_TYPE = "x-error-type"  # DLQ: the exception class of a 500
