"""The origin block a restart reads an earn's documents by, and which stores get only the unique
indexes (adapters/mongo.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from badge_worker import constants as K
from badge_worker.adapters.mongo import ignores_indexes, origin_block

topics = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
offsets = st.integers(min_value=0, max_value=2**63 - 1)


@given(topics, st.integers(min_value=0, max_value=10_000), offsets, offsets)
def test_two_offsets_of_a_partition_share_a_block_exactly_when_they_share_a_run_of_offsets(
        topic: str, partition: int, a: int, b: int) -> None:
    same = origin_block(f"{topic}/{partition}/{a}") == origin_block(f"{topic}/{partition}/{b}")
    assert same == (a // K.ORIGIN_BLOCK_OFFSETS == b // K.ORIGIN_BLOCK_OFFSETS)


@given(topics, offsets)
def test_partitions_never_share_a_block(topic: str, offset: int) -> None:
    assert origin_block(f"{topic}/1/{offset}") != origin_block(f"{topic}/2/{offset}")
    assert origin_block(f"{topic}/1/{offset}") != origin_block(f"{topic}x/1/{offset}")


def test_the_block_names_the_partition_and_the_run() -> None:
    assert origin_block("t.earns/3/0") == "t.earns/3/0"
    assert origin_block(f"t.earns/3/{K.ORIGIN_BLOCK_OFFSETS - 1}") == "t.earns/3/0"
    assert origin_block(f"t.earns/3/{K.ORIGIN_BLOCK_OFFSETS}") == "t.earns/3/1"


def test_an_origin_of_another_form_is_its_own_block() -> None:
    for origin in ("", "no-slashes", "t/3/", "t/3/-1", "t/3/x1", "/5", "t/3/\u00b2", "t/3/" + "9" * 5000):
        assert origin_block(origin) == origin


def test_only_ferretdb_v1_is_taken_for_a_store_that_ignores_indexes() -> None:
    assert ignores_indexes({"version": "7.0.42", "ferretdbVersion": "v1.24.2"})
    assert ignores_indexes({"ferretdbVersion": "1.0.0"})
    assert not ignores_indexes({"version": "7.0.42", "ferretdbVersion": "v2.1.0"})  # DocumentDB: real indexes
    assert not ignores_indexes({"version": "8.0.4"})  # MongoDB
    assert not ignores_indexes({"ferretdbVersion": None})
