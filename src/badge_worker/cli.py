"""badge-worker run | badges load FILE... | dlq replay | demo"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from pydantic import ValidationError
from pymongo import AsyncMongoClient

from badge_worker import logs
from badge_worker.adapters.mongo import Repositories
from badge_worker.domain.models import BadgeDefinition
from badge_worker.settings import Settings


def load_badge_files(paths: list[Path]) -> list[BadgeDefinition]:
    badges: list[BadgeDefinition] = []
    for path in paths:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            badges.extend(BadgeDefinition.from_payload(payload))
        except (OSError, ValueError, ValidationError) as exc:
            raise SystemExit(f"{path}: {exc}") from exc
    return badges


async def store_badges(settings: Settings, badges: list[BadgeDefinition]) -> int:
    """Upsert definitions (and create the indexes the worker needs)."""
    client: AsyncMongoClient = AsyncMongoClient(settings.mongodb_uri)  # type: ignore[type-arg]
    try:
        repos = Repositories(client[settings.mongodb_database])
        await repos.ensure_indexes()
        for badge in badges:
            await repos.upsert_badge(badge)
    finally:
        await client.close()
    return len(badges)


async def load_badges(settings: Settings, paths: list[Path]) -> int:
    return await store_badges(settings, load_badge_files(paths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="badge-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="consume commands until SIGTERM/SIGINT, then drain and commit")
    badges = sub.add_parser("badges", help="badge definitions").add_subparsers(dest="action", required=True)
    load = badges.add_parser("load", help="upsert definitions in the seed's Get-badge shape")
    load.add_argument("files", nargs="+", type=Path)
    dlq = sub.add_parser("dlq", help="dead-letter queue").add_subparsers(dest="action", required=True)
    replay = dlq.add_parser("replay", help="re-publish DLQ records to their original topics")
    replay.add_argument("--topic", help="only records that came from this input topic")
    replay.add_argument("--code", type=int, help="only records rejected with this error code")
    replay.add_argument("--org", type=int, help="only records of this orgId")
    replay.add_argument("--limit", type=int, help="replay at most this many")
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed; change nothing")
    demo = sub.add_parser("demo", help="the main job: seed badges, sample commands, worker, outcome table")
    demo.add_argument("--seeds", type=Path, default=None, help="seed pages folder (default ../shared/seeds)")
    args = parser.parse_args(argv)

    settings = Settings()
    logs.configure(settings.log_level)

    if args.command == "run":
        from badge_worker.service.worker import run_worker

        asyncio.run(run_worker(settings))
        return 0
    if args.command == "badges":
        count = asyncio.run(load_badges(settings, args.files))
        print(f"loaded {count} badge definition(s) into {settings.mongodb_database}.badges")
        return 0
    if args.command == "dlq":
        from badge_worker.service.replay import ReplayFilter, replay_dlq

        report = asyncio.run(replay_dlq(settings, ReplayFilter(args.topic, args.code, args.org, args.limit),
                                        dry_run=args.dry_run))
        for item in report.items:
            print(json.dumps(item))
        verb = "would replay" if args.dry_run else "replayed"
        print(f"scanned {report.scanned}, {verb} {report.replayed}, skipped {report.skipped}", file=sys.stderr)
        return 0
    if args.command == "demo":
        from badge_worker.demo import run_demo

        return asyncio.run(run_demo(settings, args.seeds))
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
