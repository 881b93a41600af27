"""Every Lua script touches only keys its call declares (what Redis Cluster routes by),
shown on a real Redis by MONITOR + COMMAND GETKEYS (lua_audit.py)."""

from __future__ import annotations

from urllib.parse import urlparse

from redis.asyncio import Redis

from badge_worker.adapters.redis_store import RedisStore
from badge_worker.settings import Settings
from tests.integration.lua_audit import KeyAudit, every_script, exercise_every_script, parse_line, script_name


def test_monitor_lines_are_parsed_with_their_quoting() -> None:
    line = rb'+1.5 [0 127.0.0.1:1] "EVALSHA" "ab" "1" "k{1:b}" "a \"q\" \\ \x01"'
    assert parse_line(line) == ("client", [b"EVALSHA", b"ab", b"1", b"k{1:b}", b'a "q" \\ \x01'])
    assert parse_line(rb'+1.5 [0 lua] "GET" "x y"') == ("lua", [b"GET", b"x y"])


async def test_every_script_touches_only_declared_keys(redis_client: Redis, settings: Settings) -> None:
    url = urlparse(settings.redis_url)
    store = RedisStore(redis_client, prefix=settings.redis_key_prefix)
    audit = KeyAudit([(url.hostname or "127.0.0.1", url.port or 6379)])
    async with audit.watching():
        seen = await exercise_every_script(store, 1, "audit")
    # the scenario did what it says, so the audit covered those paths
    assert seen["pending"].detail == "CONFIRMED"
    assert seen["new"] == ["OK", "OK", "FULL"] and seen["dup"] == "DUP"
    assert seen["many"] == ["OK"] * 6
    assert (seen["release"], seen["release_again"], seen["release_stored"]) == ("RELEASED", "DONE", "RELEASED")
    assert (seen["restored"], seen["restored_again"]) == ("RELEASED", "NONE")
    assert seen["cold"] == "OK" and seen["forced"]
    assert (seen["old_window_before"], seen["old_window_after"]) == (1, 0), "the collection deleted nothing"
    # the calls a KEYS reply sent back were made again with more keys declared
    pending = [c for c in audit.calls if script_name(c.sha) == "reserve" and c.declared[1].endswith(":pending")]
    assert len(pending) == 2 and len(pending[1].declared) > len(pending[0].declared)
    released = [c for c in audit.calls if script_name(c.sha) == "release" and c.declared[1].endswith(":new0")]
    assert len(released) >= 2 and len(released[1].declared) > len(released[0].declared)
    restored = [c for c in audit.calls if script_name(c.sha) == "release_restored"]
    assert len(restored) == 3 and len(restored[1].declared) > len(restored[0].declared)
    assert audit.scripts_run() == every_script(), "a script the scenario never ran"
    assert audit.undeclared() == []
    # and the audit does see an undeclared key: an ad-hoc script reading one
    probe = redis_client.register_script("return redis.call('GET', KEYS[1] .. ':other')")
    spy = KeyAudit(audit.nodes)
    async with spy.watching():
        await probe(keys=[f"{settings.redis_key_prefix}:probe"])
    assert [line.split(":")[0] for line in spy.undeclared()] == [probe.sha]
