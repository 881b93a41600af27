"""A message delivered again after a worker stopped while processing it: what its first run
left in MongoDB, so that the second run finishes the same command instead of deciding anew.

Reads come from a ResumeState that the processor loads once per batch for all such
messages (adapters/mongo.py: one query per collection); a message the batch did not
foresee (Redis lost its requestId keys) falls back to one query per read.
"""

from __future__ import annotations

from typing import Any

from badge_worker.adapters.mongo import Repositories, ResumeState

Doc = dict[str, Any]


class Resume:
    def __init__(self, repos: Repositories, org: int, request_id: str, state: ResumeState | None) -> None:
        self.repos, self.key = repos, (org, request_id)
        self.state = state if state is not None and self.key in state.keys else None

    @property
    def _flt(self) -> Doc:
        return {"orgId": self.key[0], "requestId": self.key[1]}

    async def issue(self) -> Doc | None:
        """The issue the first run inserted, if any."""
        if self.state is not None:
            return self.state.issues.get(self.key)
        return await self.repos.issues.find_one(self._flt)

    async def earned(self) -> Doc | None:
        """The earned badge the first run inserted, if any (perhaps revoked since)."""
        if self.state is not None:
            return self.state.earned.get(self.key)
        return await self.repos.find_earned_by_request(*self.key)

    async def intent(self) -> Doc | None:
        """The earn intent the first run inserted, if any."""
        if self.state is not None:
            return self.state.intents.get(self.key)
        return await self.repos.find_intent(*self.key)

    async def was_rejected(self) -> bool:
        """Whether the first run marked its intent refused (unknown: assume it may have)."""
        if self.state is not None:
            return self.key in self.state.rejected
        return True

    async def revoked_issue_ids(self) -> list[str]:
        """The issues the first run of a revokeIssue revoked."""
        if self.state is not None:
            return list(self.state.revoked_issues.get(self.key, []))
        return await self.repos.issues_revoked_by(*self.key)
