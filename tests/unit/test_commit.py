"""An output record always fits its topic: oversized keys and values are cut and say so."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from badge_worker import constants as K
from badge_worker.service.commit import RECORD_OVERHEAD, fit_record

HEADERS = [(K.H_INPUT_TOPIC, b"badges.earns"), (K.H_INPUT_OFFSET, b"12")]


def size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    return (len(key or b"") + len(value or b"") + RECORD_OVERHEAD
            + sum(len(k.encode()) + len(v) + 16 for k, v in headers))


def test_a_record_that_fits_is_left_alone() -> None:
    assert fit_record(b"k", b"v" * 1000, HEADERS, 2_000_000) == (b"k", b"v" * 1000, HEADERS)


def test_an_oversized_value_is_cut_and_the_original_sizes_are_named() -> None:
    key, value, headers = fit_record(b"42", b"x" * 1_500_000, HEADERS, 1_048_576)
    assert key == b"42" and value is not None and 0 < len(value) < 1_500_000
    assert size(key, value, headers) <= 1_048_576
    assert dict(headers)[K.H_TRUNCATED] == b"key=2,value=1500000"


@given(st.integers(0, 3_000_000), st.integers(0, 3_000_000), st.integers(4_096, 2_097_152))
def test_whatever_the_sizes_the_result_fits(key_len: int, value_len: int, limit: int) -> None:
    key, value, headers = fit_record(b"k" * key_len, b"v" * value_len, HEADERS, limit)
    assert size(key, value, headers) <= limit
    if size(b"k" * key_len, b"v" * value_len, HEADERS) <= limit:
        assert headers == HEADERS
