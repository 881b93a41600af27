"""Which queries a piece of code sends to MongoDB (PyMongo command monitoring), and whether
an index `ensure_indexes` creates serves each (tests/integration/test_query_shapes.py,
test_api_queries.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymongo import monitoring

from badge_worker.adapters.mongo import Repositories

READS = ("find", "aggregate", "count", "distinct")
WRITES_WITH_FILTER = ("update", "delete", "findAndModify")


@dataclass
class Shapes(monitoring.CommandListener):
    """Each read or filtered write: (command, collection, filter fields, sort fields)."""

    seen: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        cmd = event.command
        name = event.command_name
        if name == "aggregate":  # count_documents: a leading $match
            stages = cmd.get("pipeline") or []
            match = stages[0].get("$match", {}) if stages else {}
            self.seen.append((name, str(cmd[name]), _fields(match), ()))
        elif name in READS:
            self.seen.append((name, str(cmd[name]), _fields(cmd.get("filter") or cmd.get("query") or {}),
                              tuple(cmd.get("sort") or ())))
        elif name in WRITES_WITH_FILTER:
            statements = cmd.get("updates") or cmd.get("deletes") or [cmd]
            for statement in statements:
                self.seen.append((name, str(cmd[name]), _fields(statement.get("q") or statement.get("query") or {}),
                                  ()))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def reads(self) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
        return [s for s in self.seen if s[0] in READS]


def _fields(flt: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(k for k in flt if not k.startswith("$")))


async def indexes_of(repos: Repositories) -> dict[str, list[tuple[str, ...]]]:
    """The indexes on the server, and those `index_models` declares for MongoDB (FerretDB v1
    gets only the unique ones: its finds use none)."""
    found: dict[str, list[tuple[str, ...]]] = {}
    for name in await repos.db.list_collection_names():
        async for ix in await repos.db[name].list_indexes():
            found.setdefault(name, []).append(tuple(ix["key"].keys()))
    for collection, models in repos.index_models().items():
        found.setdefault(collection.name, []).extend(tuple(m.document["key"].keys()) for m in models)
    return found


def served(fields: tuple[str, ...], sort: tuple[str, ...], indexes: list[tuple[str, ...]]) -> bool:
    """An index answers the query when the filter's fields are a leading part of its keys (in
    any order), or all of its keys are in the filter; a sort must follow on the same index."""
    if "_id" in fields:  # the _id index answers any filter that names _id
        return True
    for keys in indexes:
        lead = keys[: len(fields)]
        if set(lead) == set(fields) and (not sort or keys[len(fields): len(fields) + len(sort)] == sort):
            return True
        if not sort and set(keys) <= set(fields) and keys != ("_id",):
            return True
    return False
