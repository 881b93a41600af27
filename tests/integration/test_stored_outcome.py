"""Stored outcomes on a real MongoDB/FerretDB: kept as JSON text, the first one wins, and an
outcome stored as a document by an earlier version still answers a redelivery."""

from __future__ import annotations

from bson import ObjectId

from badge_worker.adapters import stored_outcome
from badge_worker.adapters.mongo import Repositories


def outcome(request_id: str, code: str | None = None) -> dict[str, object]:
    errors = [{"code": code, "message": "refused"}] if code else []
    return {"type": "earn", "orgId": 7, "requestId": request_id, "data": None if code else {"n": 1},
            "errors": errors, "warnings": []}


async def test_outcomes_are_stored_as_text_and_the_first_one_is_kept(mongo: Repositories) -> None:
    first, second = ObjectId(), ObjectId()
    assert await mongo.ledger_store_outcomes([(first, outcome("a")), (second, outcome("b"))]) == {}
    raw = await mongo.outcomes.find_one({"_id": first})
    assert raw is not None and set(raw) == {"_id", stored_outcome.TEXT, "decidedAt"}
    assert isinstance(raw[stored_outcome.TEXT], str)
    # another run of the same message decided otherwise: it is told the first outcome
    earlier = await mongo.ledger_store_outcomes([(first, outcome("a", "830")), (ObjectId(), outcome("c"))])
    assert earlier == {first: outcome("a")}


async def test_an_outcome_stored_as_a_document_answers_a_redelivery(mongo: Repositories) -> None:
    legacy = outcome("old")
    ledger = await mongo.ledger_insert_many([(7, "old", "t/0/5", "earn")])
    entry = ledger[0]
    assert entry is not None
    await mongo.outcomes.insert_one({"_id": entry.id, "outcome": legacy, "decidedAt": 1.0})
    state = await mongo.prefetch_resume([(7, "old")], ["earn"])
    assert state.outcomes == {entry.id: legacy}
    again = await mongo.ledger_claim(7, "old", "t/0/5", "earn")  # no resume state: the duplicate path
    assert (again.new, again.outcome) == (False, legacy)
    assert await mongo.ledger_store_outcomes([(entry.id, outcome("old", "830"))]) == {entry.id: legacy}
