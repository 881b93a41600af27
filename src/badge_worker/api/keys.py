"""Per-org API keys of the read API (CONTRACT.md section 6).

A key is `bwk_<keyId>_<secret>`: the key id finds its document by `_id` (one lookup, no
scan even on FerretDB), and only a SHA-256 of the secret is stored. The secret is 256 random
bits, so a plain hash is enough (a slow KDF protects guessable passwords, not random keys);
it is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from badge_worker import constants as K

Doc = dict[str, Any]
PREFIX = "bwk"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    org: int
    name: str
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> Doc:
        """What `keys list` shows: never the secret nor its hash."""
        return {"keyId": self.key_id, "orgId": self.org, "name": self.name, "createdAt": self.created_at,
                "revokedAt": self.revoked_at, "active": self.active}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    parts = token.strip().split("_")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def _key(doc: Doc) -> ApiKey:
    return ApiKey(str(doc["_id"]), int(doc["orgId"]), str(doc.get("name") or ""), float(doc["createdAt"]),
                  doc.get("revokedAt"))


class ApiKeys:
    def __init__(self, db: AsyncDatabase[Doc], cache_ttl: float = 5.0) -> None:
        self.keys = db[K.API_KEYS]
        self.cache_ttl = cache_ttl  # a revoke takes effect within this, in every API process
        self._cache: dict[str, tuple[float, str, int]] = {}  # valid keys: key id -> (until, digest, org)

    async def ensure_indexes(self) -> None:
        if "org" not in {ix["name"] async for ix in await self.keys.list_indexes()}:
            await self.keys.create_index([("orgId", 1)], name="org")

    async def create(self, org: int, name: str = "") -> tuple[ApiKey, str]:
        """A new key of `org`; the token is returned here once and never stored."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32).replace("_", "-")  # '_' separates the parts
        doc = {"_id": key_id, "orgId": org, "name": name, "hash": _digest(secret), "createdAt": time.time(),
               "revokedAt": None}
        await self.keys.insert_one(doc)
        return _key(doc), f"{PREFIX}_{key_id}_{secret}"

    async def list(self, org: int | None = None) -> list[ApiKey]:
        query: Doc = {} if org is None else {"orgId": org}
        found = [_key(d) async for d in self.keys.find(query)]
        return sorted(found, key=lambda k: (k.org, k.created_at))

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key (kept, marked, for the audit trail); None if there is no such key."""
        doc = await self.keys.find_one({"_id": key_id})
        if doc is None:
            return None
        if doc.get("revokedAt") is None:
            doc["revokedAt"] = time.time()
            await self.keys.update_one({"_id": key_id}, {"$set": {"revokedAt": doc["revokedAt"]}})
        self._cache.pop(key_id, None)
        return _key(doc)

    async def org_of(self, token: str) -> int | None:
        """The org of a valid, unrevoked key; None for anything else."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        key_id, secret = parsed
        digest = _digest(secret)
        hit = self._cache.get(key_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now and hmac.compare_digest(hit[1], digest):
            return hit[2]
        doc = await self.keys.find_one({"_id": key_id})
        if doc is None or doc.get("revokedAt") is not None or \
                not hmac.compare_digest(str(doc.get("hash")), digest):
            return None  # never cached: a wrong secret must not evict the right one
        org = int(doc["orgId"])
        if self.cache_ttl > 0:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key_id] = (now + self.cache_ttl, digest, org)
        return org
