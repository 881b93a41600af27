"""How an outcome is kept in the `outcomes` collection: as its JSON text, not as a document.

Nothing queries inside a stored outcome (it is read back whole, by the ledger entry's `_id`),
and on FerretDB a nested document is what costs: measured over 20,250 outcomes of the bench,
inserting one took 191 µs as a document against 43 µs as text, and any find (which reads the
whole collection there) 4.7 s against 1.1 s — the read that a restarted worker waits for.
On MongoDB it is the same index lookup either way. Outcomes stored as documents by earlier
versions (`outcome`) are still read.
"""

from __future__ import annotations

from typing import Any

from badge_worker import constants as K
from badge_worker.adapters import json_text

Doc = dict[str, Any]
TEXT = "outcomeJson"
LEGACY = "outcome"


def document(ledger_id: Any, outcome: Doc, decided_at: float, block: str) -> Doc:
    """`block`: the origin block of the message decided (constants.ORIGIN_BLOCK_FIELD)."""
    return {"_id": ledger_id, TEXT: json_text.dumps(outcome), "decidedAt": decided_at, K.ORIGIN_BLOCK_FIELD: block}


def outcome_of(doc: Doc) -> Doc:
    text = doc.get(TEXT)
    if text is None:
        legacy: Doc = doc[LEGACY]
        return legacy
    loaded = json_text.loads(text)
    if not isinstance(loaded, dict):
        raise ValueError(f"stored outcome {doc.get('_id')} is not a JSON object")
    return loaded

