"""Proof that a record is a DLQ replay, so that only `dlq replay` can mark one.

A replay carries `x-replay-of` (the original coordinates) and `x-original-timestamp`; the
worker then treats it as that first message (its stored outcome, its original time). Any
producer could set those headers, so `dlq replay` also writes `x-replay-signature`: an
HMAC-SHA256, under a key only the worker and the operator tool share, of the origin, the
original timestamp and a digest of the record's key and value. A record whose mark does not
verify is handled as a new message and its replay headers are ignored.

The key is REPLAY_SIGNING_KEY when set; otherwise a random key created once in MongoDB
(collection `settings`), which producers on Kafka cannot read.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from badge_worker import constants as K


def _digest(origin: str, original_ts: str, key: bytes | None, value: bytes | None) -> bytes:
    body = hashlib.sha256()
    for part in (origin.encode("utf-8", "surrogatepass"), original_ts.encode("utf-8", "surrogatepass"),
                 key or b"", value or b""):
        body.update(len(part).to_bytes(8, "big"))
        body.update(part)
    return body.digest()


def sign(secret: bytes, origin: str, original_ts: str, key: bytes | None, value: bytes | None) -> str:
    return hmac.new(secret, _digest(origin, original_ts, key, value), hashlib.sha256).hexdigest()


def verify(secret: bytes, signature: str | None, origin: str, original_ts: str, key: bytes | None,
           value: bytes | None) -> bool:
    if not signature:
        return False
    return hmac.compare_digest(sign(secret, origin, original_ts, key, value), signature.strip())


async def signing_key(db: AsyncDatabase[dict[str, Any]], configured: str | None) -> bytes:
    """The configured key, else the one stored in MongoDB (created by whoever asks first)."""
    if configured:
        return configured.encode()
    settings = db[K.SETTINGS]
    found = await settings.find_one({"_id": K.REPLAY_KEY_ID})
    if found is None:
        with contextlib.suppress(DuplicateKeyError):  # another process created it first
            await settings.insert_one({"_id": K.REPLAY_KEY_ID, "key": secrets.token_hex(32)})
        found = await settings.find_one({"_id": K.REPLAY_KEY_ID})
    assert found is not None
    return str(found["key"]).encode()
