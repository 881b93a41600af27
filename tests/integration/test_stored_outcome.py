"""Stored outcomes on a real MongoDB/FerretDB: kept as JSON text, the first one wins, and an
outcome stored as a document by an earlier version still answers a redelivery."""

from __future__ import annotations

from bson import ObjectId

from badge_worker import constants as K
from badge_worker.adapters import stored_outcome
from badge_worker.adapters.mongo import Repositories


def outcome(request_id: str, code: str | None = None) -> dict[str, object]:
    errors = [{"code": code, "message": "refused"}] if code else []
    return {"type": "earn", "orgId": 7, "requestId": request_id, "data": None if code else {"n": 1},
            "errors": errors, "warnings": []}


async def test_outcomes_are_stored_as_text_and_the_first_one_is_kept(mongo: Repositories) -> None:
    first, second = ObjectId(), ObjectId()
    assert await mongo.ledger_store_outcomes([(first, outcome("a"), "t/0/1"), (second, outcome("b"), "t/0/2")]) == {}
    raw = await mongo.outcomes.find_one({"_id": first})
    assert raw is not None and set(raw) == {"_id", stored_outcome.TEXT, "decidedAt", K.ORIGIN_BLOCK_FIELD}
    assert raw[K.ORIGIN_BLOCK_FIELD] == "t/0/0"
    assert isinstance(raw[stored_outcome.TEXT], str)
    # another run of the same message decided otherwise: it is told the first outcome
    earlier = await mongo.ledger_store_outcomes([(first, outcome("a", "830"), "t/0/1"),
                                               (ObjectId(), outcome("c"), "t/0/3")])
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
    assert await mongo.ledger_store_outcomes([(entry.id, outcome("old", "830"), "t/0/5")]) == {entry.id: legacy}


async def test_limits_are_stored_as_text_and_both_shapes_count_in_a_rebuild(mongo: Repositories) -> None:
    limits = [{"kind": "l", "counter": "c:1:b:life"}, {"kind": "c", "counter": "b:w:1", "end": 2e9}]

    def body(customer: int) -> dict[str, object]:
        return {"_id": ObjectId(), "customerId": customer, "badgeMetaId": "b", "eventDate": 100.0,
                "earnedOn": 100.0, "limits": limits}

    intent = await mongo.insert_intent(7, "new-1", body(1))
    assert intent["limits"] == limits  # handed back as given
    earned = await mongo.insert_earned(7, "new-1", {**body(1), "_id": intent["_id"], "earnConstraints": [{"n": 1}]})
    raw = await mongo.earned.find_one({"_id": earned["_id"]})
    assert raw is not None and isinstance(raw["limits"], str) and isinstance(raw["earnConstraints"], str)
    again = await mongo.insert_earned(7, "new-1", {**body(1), "earnConstraints": []})  # a rerun: the stored one
    assert (again["_id"], again["limits"], again["earnConstraints"]) == (earned["_id"], limits, [{"n": 1}])
    # written by an earlier version: arrays, not text
    await mongo.earned.insert_one({"orgId": 7, "requestId": "old-1", "status": "ACTIVE", **body(2)})
    await mongo.intents.insert_one({"orgId": 7, "requestId": "old-2", "status": "PENDING", **body(3)})
    await mongo.insert_intent(7, "new-2", body(4))
    held = {h.request_id: ([r.to_doc() for r in h.limits], h.confirmed) for h in await mongo.held_earns(7, "b")}
    assert held == {"new-1": (limits, True), "old-1": (limits, True), "old-2": (limits, False),
                    "new-2": (limits, False)}
    assert (await mongo.find_intent(7, "new-2") or {}).get("limits") == limits
    # a restart's resume read hands them back as given too
    await mongo.ledger_insert_many([(7, "new-1", "t/0/1", "earn"), (7, "new-2", "t/0/2", "earn")])
    state = await mongo.prefetch_resume([(7, "new-2"), (7, "new-1")], ["earn"])
    assert state.intents[(7, "new-2")]["limits"] == limits
    assert (state.earned[(7, "new-1")]["limits"], state.earned[(7, "new-1")]["earnConstraints"]) == (limits, [{"n": 1}])
