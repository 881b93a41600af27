"""The main job: load badge definitions (the vendor's examples and a few live demo badges), publish
a sample of claim/issue/earn commands including rejections, run the worker, print outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from badge_worker.cli import store_badges
from badge_worker.client import Collector, Coord, Publisher
from badge_worker.domain.models import BadgeDefinition
from badge_worker.domain.timeutil import iso
from badge_worker.seedpages import badge_examples, default_seeds_dir, packaged_badges
from badge_worker.service.worker import Worker
from badge_worker.settings import Settings

ORG = 100458
DAY = 86_400


def demo_badges(now: float, run: str) -> list[BadgeDefinition]:
    """Live badges (started a month ago, ending in a year) with every kind of limit."""
    start, end = now - 30 * DAY, now + 365 * DAY
    limited = {
        "id": f"demo-earn-{run}", "orgId": ORG, "name": "Five purchases", "startOn": start, "expiresOn": end,
        "earnType": "EARN", "active": True,
        "earnedBadgeExpiry": {"expiryType": "RELATIVE", "relativeExpirytype": "DAYS", "value": 30},
        "ownership": {"restrictedToOwners": ["Loyalty", "Milestones"], "claims": []},
        "customerConstraints": [{"constraintType": "CUSTOMER_BADGE_FIXED_VALUE", "maxEarnLimit": 2}],
        "badgeConstraints": [
            {"constraintType": "BADGE_FIXED_WINDOW", "durationType": "DAYS", "refreshRate": 1,
             "maxEarnLimit": 5, "startDate": start},
            {"constraintType": "BADGE_ROLLING_WINDOW", "rollType": "WEEKS", "rollValue": 1, "maxEarnLimit": 50},
        ],
    }
    issue_earn = {
        "id": f"demo-issue-{run}", "orgId": ORG, "name": "Enrolled challenge", "startOn": start,
        "expiresOn": end, "earnType": "ISSUE_EARN", "active": True,
        "issuedBadgeExpiry": {"expiryType": "RELATIVE", "relativeExpirytype": "DAYS", "value": 10},
        "earnedBadgeExpiry": {"expiryType": "NEVER"},
        "customerConstraints": [{"constraintType": "CUSTOMER_BADGE_ROLLING_WINDOW", "maxEarnForDays": 3,
                                 "rollForDays": 1}],
    }
    inactive = {"id": f"demo-off-{run}", "orgId": ORG, "name": "Switched off", "startOn": start,
                "expiresOn": end, "active": False}
    return [BadgeDefinition.model_validate(b) for b in (limited, issue_earn, inactive)]


def seed_badges(seeds: Path | None) -> list[BadgeDefinition]:
    """The vendor's example badges (they ended in the past: 815 shows that).

    By default the ones shipped in the package; a folder of API pages given with `--seeds` (or
    $BADGE_SEEDS_DIR) is read instead.
    """
    if seeds is not None:
        if not seeds.is_dir():
            raise SystemExit(f"--seeds {seeds}: not a folder")
        return badge_examples(seeds)
    folder = default_seeds_dir()
    return badge_examples(folder) if folder is not None else packaged_badges()


def _cell(text: Any, width: int) -> str:
    value = "" if text is None else str(text)
    return value if len(value) <= width else value[: width - 1] + "…"


async def run_demo(settings: Settings, seeds: Path | None) -> int:
    run = uuid.uuid4().hex[:6]
    now = time.time()
    badges = seed_badges(seeds) + demo_badges(now, run)
    await store_badges(settings, badges)
    print(f"loaded {len(badges)} badge definitions (run {run})")

    earn_b, issue_b, off_b = (f"demo-earn-{run}", f"demo-issue-{run}", f"demo-off-{run}")
    seed_ended = next((b.id for b in badges if b.id == "662724bb8fe258516a88fde2"), off_b)

    def rid(n: int) -> str:
        return f"demo-{run}-{n}"

    def c(n: int) -> int:  # a fresh customer id per run and slot
        return int(f"9{int(run, 16) % 10**6:06d}{n:02d}")

    loyalty = {"ownerType": "LOYALTY", "referenceId": "prog-1"}
    claims: list[tuple[str, Any]] = [
        ("claim by an allowed owner", {"orgId": ORG, "badgeMetaId": earn_b, **loyalty}),
        ("claim by an owner type the badge excludes", {"orgId": ORG, "badgeMetaId": earn_b,
                                                       "ownerType": "Journeys", "referenceId": "j-1"}),
        ("claim without referenceId", {"orgId": ORG, "badgeMetaId": earn_b, "ownerType": "Loyalty"}),
        ("claim without ownerType", {"orgId": ORG, "badgeMetaId": earn_b, "referenceId": "x"}),
    ]
    earns: list[tuple[str, Any]] = [
        ("earn, claimed owner", {"orgId": ORG, "requestId": rid(1), "badgeMetaId": earn_b, "customerId": c(1),
                                 "triggeredBy": loyalty}),
        ("earn, MemberCare path", {"orgId": ORG, "requestId": rid(2), "badgeMetaId": earn_b, "customerId": c(1)}),
        ("3rd earn, customer cap 2", {"orgId": ORG, "requestId": rid(3), "badgeMetaId": earn_b,
                                      "customerId": c(1)}),
        ("owner without a claim", {"orgId": ORG, "requestId": rid(4), "badgeMetaId": earn_b, "customerId": c(2),
                                   "triggeredBy": {"ownerType": "Loyalty", "referenceId": "nobody"}}),
        ("requestId reused", {"orgId": ORG, "requestId": rid(1), "badgeMetaId": earn_b, "customerId": c(3)}),
        ("no requestId", {"orgId": ORG, "badgeMetaId": earn_b, "customerId": c(3)}),
        ("no customerId", {"orgId": ORG, "requestId": rid(5), "badgeMetaId": earn_b}),
        ("unknown badge", {"orgId": ORG, "requestId": rid(6), "badgeMetaId": "000000000000000000000000",
                           "customerId": c(3)}),
        ("inactive badge", {"orgId": ORG, "requestId": rid(7), "badgeMetaId": off_b, "customerId": c(3)}),
        ("seed badge that ended", {"orgId": ORG, "requestId": rid(8), "badgeMetaId": seed_ended,
                                   "customerId": c(3)}),
        ("event 3 days ahead", {"orgId": ORG, "requestId": rid(9), "badgeMetaId": earn_b, "customerId": c(3),
                                "earnEventDate": now + 3 * DAY}),
        ("event before startOn", {"orgId": ORG, "requestId": rid(10), "badgeMetaId": earn_b, "customerId": c(3),
                                  "earnEventDate": now - 60 * DAY}),
        ("unknown ownerType", {"orgId": ORG, "requestId": rid(11), "badgeMetaId": earn_b, "customerId": c(3),
                               "triggeredBy": {"ownerType": "Bogus", "referenceId": "1"}}),
        ("ISSUE_EARN without issue", {"orgId": ORG, "requestId": rid(12), "badgeMetaId": issue_b,
                                      "customerId": c(4)}),
        ("issue (enrol)", {"orgId": ORG, "type": "issue", "requestId": rid(13), "badgeMetaId": issue_b,
                           "customerId": c(4)}),
        ("issue again", {"orgId": ORG, "type": "issue", "requestId": rid(14), "badgeMetaId": issue_b,
                         "customerId": c(4)}),
        ("earn with the issue", {"orgId": ORG, "requestId": rid(15), "badgeMetaId": issue_b, "customerId": c(4),
                                 "earnEventDate": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 5))}),
    ]
    earns += [(f"other customer #{n - 15}, badge cap 5/day", {"orgId": ORG, "requestId": rid(n),
                                                          "badgeMetaId": earn_b, "customerId": c(n)})
              for n in range(16, 20)]
    garbage = [("not JSON", b"{not json")]

    worker = Worker(settings.model_copy(update={"http_port": 0}))
    task = asyncio.create_task(worker.run())
    rows: list[tuple[str, Coord]] = []
    try:
        async with Collector(settings) as collector, Publisher(settings) as pub:
            for label, body in claims:
                rows.append((label, await pub.send(settings.topic_claims, body)))
            await collector.wait_for([coord for _, coord in rows], timeout=120)
            for label, body in earns:
                rows.append((label, await pub.send(settings.topic_earns, body)))
            for label, raw in garbage:
                rows.append((label, await pub.send(settings.topic_earns, raw, raw=True)))
            seen = await collector.wait_for([coord for _, coord in rows], timeout=120)
            first = seen[rows[len(claims)][1]].body
            if not first.get("data"):
                raise RuntimeError(f"the first earn was rejected: {first}")
            first_earn = first["data"]["earnedBadgeId"]
            revokes = [("revoke the first earn", {"orgId": ORG, "type": "revokeEarn", "requestId": rid(40),
                                                  "badgeMetaId": earn_b, "customerId": c(1),
                                                  "earnedBadgeId": first_earn}),
                       ("revoke it again", {"orgId": ORG, "type": "revokeEarn", "requestId": rid(41),
                                            "badgeMetaId": earn_b, "customerId": c(1),
                                            "earnedBadgeId": first_earn}),
                       ("earn again after the revoke", {"orgId": ORG, "requestId": rid(42), "badgeMetaId": earn_b,
                                                        "customerId": c(1)})]
            for label, body in revokes:
                rows.append((label, await pub.send(settings.topic_earns, body)))
            seen = await collector.wait_for([coord for _, coord in rows], timeout=120)
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 60)

    print()
    print(f"{'#':>2}  {'command':<38} {'type':<11} {'requestId':<14} {'code':>4}  result")
    print("-" * 118)
    for n, (label, coord) in enumerate(rows, 1):
        body = seen[coord].body
        code = seen[coord].code
        if code == 200:
            data = body["data"] or {}
            result = ", ".join(f"{k}={data[k]}" for k in ("earnedBadgeId", "issuedId", "ownerType", "expiresOnISO")
                               if data.get(k))
        else:
            result = body["errors"][0]["message"]
        print(f"{n:>2}  {_cell(label, 38):<38} {_cell(body.get('type'), 11):<11} "
              f"{_cell(body.get('requestId'), 14):<14} {code:>4}  {_cell(result, 46)}")
    codes = sorted({seen[coord].code for _, coord in rows})
    print(f"\n{len(rows)} commands, {len(rows)} outcomes; codes seen: {codes}")
    await show_read_api(settings, c(4), earn_b)
    return 0


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def show_read_api(settings: Settings, customer: int, badge_id: str) -> None:
    """Start the read API, make a demo key, and print what a downstream app would fetch."""
    import httpx
    import uvicorn
    from pymongo import AsyncMongoClient

    from badge_worker.api.app import create_app
    from badge_worker.api.keys import ApiKeys

    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_uri)
    try:
        _, key = await ApiKeys(client[settings.mongodb_database]).create(ORG, "demo")
    finally:
        await client.close()
    host = "127.0.0.1"
    port = settings.api_port
    try:
        with socket.socket() as probe:
            probe.bind((host, port))
    except OSError:  # API_PORT is taken (or 0): any free port
        port = _free_port(host)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_config=None,
                                           access_log=False, lifespan="on"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if serving.done():
                serving.result()
            await asyncio.sleep(0.05)
        url = f"http://{host}:{port}"
        print(f"\nread API on {url} (key {key[:16]}…, org {ORG}); GET with Authorization: Bearer <key>")
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            for kind in ("EARNED", "AVAILABLE"):
                path = f"/v1/badges/customer/{customer}?badgeType={kind}&sortOn=RANK"
                body = (await http.get(path)).json()
                listed = [f"{b['badgeMetaId']} ({b['name']}, earnedCount={b['earnedCount']}, "
                          f"lastEarnedOnDate={b['lastEarnedOnDate']})" for b in body["data"]["badges"]]
                print(f"  GET {path}\n    {len(listed)} badge(s): " + ("; ".join(listed) or "none"))
            path = f"/v1/badges/badgeMeta/{badge_id}?includeStatistics=true"
            data = (await http.get(path)).json()["data"]
            cycles = [f"{c['constraintType']} cycle {iso(c['currentCycle']['startDate'])} .. "
                      f"{iso(c['currentCycle']['endDate'])} ({c['cycleStatus']})"
                      for c in data["customerConstraints"] + data["badgeConstraints"] if "currentCycle" in c]
            print(f"  GET {path}\n    status={data['status']} issuedCount={data['issuedCount']} "
                  f"earnedCount={data['earnedCount']}; " + "; ".join(cycles))
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
