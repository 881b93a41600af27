"""The outcome codec of the `outcomes` collection: JSON text in, the same outcome out."""

from __future__ import annotations

from typing import Any

import pytest
from bson import BSON, ObjectId
from hypothesis import given
from hypothesis import strategies as st

from badge_worker.adapters import stored_outcome
from badge_worker.adapters.mongo import counter_refs, pack, unpack

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_what_is_stored_reads_back_the_same(outcome: dict[str, Any]) -> None:
    doc = stored_outcome.document(ObjectId(), outcome, 1.5, "t/0/0")
    assert isinstance(doc[stored_outcome.TEXT], str)  # one string field: no nested document
    assert stored_outcome.outcome_of(BSON.decode(BSON.encode(doc))) == outcome


@pytest.mark.parametrize("value", ["lone \ud800 surrogate", 2**70])
def test_what_orjson_refuses_is_stored_by_the_stdlib(value: Any) -> None:
    outcome = {"requestId": "r1", "data": {"v": value}}
    doc = stored_outcome.document(ObjectId(), outcome, 1.5, "t/0/0")
    BSON.encode(doc)  # the text is storable: the surrogate is escaped, the integer written out
    assert stored_outcome.outcome_of(doc) == outcome


def test_an_outcome_stored_as_a_document_by_an_earlier_version_is_read() -> None:
    outcome = {"type": "earn", "orgId": 1, "requestId": "r1", "data": None, "errors": [], "warnings": []}
    assert stored_outcome.outcome_of({"_id": ObjectId(), "outcome": outcome, "decidedAt": 1.0}) == outcome


def test_a_stored_text_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        stored_outcome.outcome_of({"_id": 1, stored_outcome.TEXT: "[1, 2]"})


def test_limits_and_constraints_are_packed_as_text_and_read_back_either_way() -> None:
    limits = [{"kind": "l", "counter": "c:1:x:life"}, {"kind": "c", "counter": "b:y:w:1", "end": 1796500557.9313276},
              {"kind": "z", "counter": "b:z:r:1WEEKS", "roll": 604800.0}]
    body = {"_id": ObjectId(), "eventDate": 10.0, "limits": limits, "earnConstraints": [{"currentEarnCount": 2}],
            "triggeredBy": {"ownerType": "LOYALTY", "referenceId": "r"}}
    packed = pack(body)
    assert isinstance(packed["limits"], str) and isinstance(packed["earnConstraints"], str)
    assert packed["triggeredBy"] == body["triggeredBy"]  # the read API queries and returns it: left as is
    assert body["limits"] is limits  # the caller's document is not changed
    stored = BSON.decode(BSON.encode(packed))
    assert counter_refs(dict(stored)) == counter_refs(body)  # an array (earlier versions) or text: the same
    assert unpack(stored) == body
    assert pack(packed) == packed  # packing twice changes nothing
