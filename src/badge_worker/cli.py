"""badge-worker run | api | badges load FILE... | keys create|list|revoke | customers load FILE |
dlq replay | counters check|rebuild | demo"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import structlog
from pydantic import ValidationError
from pymongo import AsyncMongoClient

from badge_worker import logs
from badge_worker.adapters.kafka_io import KafkaSecurityError
from badge_worker.adapters.mongo import BadgeOfAnotherOrg, Repositories
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
    """Upsert definitions (and create the indexes the worker needs). A definition already
    stored is updated but keeps the claims recorded by claim commands, which live in their
    own documents (Repositories.upsert_badge); counters keep their counts unless a window shape changed
    (docs/counters.md)."""
    client: AsyncMongoClient = AsyncMongoClient(settings.mongodb_uri)  # type: ignore[type-arg]
    try:
        repos = Repositories(client[settings.mongodb_database])
        await repos.ensure_indexes()
        for badge in badges:
            try:
                await repos.upsert_badge(badge)
            except BadgeOfAnotherOrg as exc:
                raise SystemExit(f"{exc} (nothing after it was loaded)") from exc
    finally:
        await client.close()
    return len(badges)


async def load_badges(settings: Settings, paths: list[Path]) -> int:
    return await store_badges(settings, load_badge_files(paths))


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from badge_worker.api.keys import ApiKeys

    client: AsyncMongoClient = AsyncMongoClient(settings.mongodb_uri)  # type: ignore[type-arg]
    try:
        keys = ApiKeys(client[settings.mongodb_database])
        if args.action == "create":
            await keys.ensure_indexes()
            key, token = await keys.create(args.org, args.name)
            print(json.dumps({"keyId": key.key_id, "orgId": key.org, "name": key.name, "key": token}))
            print("store the key now: it is not shown again", file=sys.stderr)
            return 0
        if args.action == "list":
            for item in await keys.list(args.org):
                print(json.dumps(item.public()))
            return 0
        revoked = await keys.revoke(args.key_id)
        if revoked is None:
            print(f"no key {args.key_id}", file=sys.stderr)
            return 1
        print(json.dumps(revoked.public()))
        return 0
    finally:
        await client.close()


async def _load_customers(settings: Settings, path: Path) -> int:
    from badge_worker.api.customers import CustomerRegistry, RegistryError, read_file

    try:
        records = list(read_file(path.read_text(encoding="utf-8")))  # noqa: ASYNC240 - a CLI, before any I/O
    except (OSError, ValueError, RegistryError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 1
    client: AsyncMongoClient = AsyncMongoClient(settings.mongodb_uri)  # type: ignore[type-arg]
    try:
        report = await CustomerRegistry(client[settings.mongodb_database]).load(records)
    finally:
        await client.close()
    for problem in report.rejected:
        print(problem, file=sys.stderr)
    print(f"loaded {report.loaded}, unchanged {report.unchanged}, rejected {len(report.rejected)}")
    return 1 if report.rejected else 0


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


EX_CONFIG = 78  # sysexits.h: a configuration error, which a restart does not fix


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KafkaSecurityError as exc:  # any command: refused Kafka credentials or TLS settings
        structlog.get_logger("badge_worker.cli").error("kafka_security_error", reason=str(exc))
        return EX_CONFIG


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="badge-worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="consume commands until SIGTERM/SIGINT, then drain and commit")
    badges = sub.add_parser("badges", help="badge definitions").add_subparsers(dest="action", required=True)
    load = badges.add_parser("load", help="upsert definitions in the seed's Get-badge shape")
    load.add_argument("files", nargs="+", type=Path)
    dlq = sub.add_parser("dlq", help="dead-letter queue").add_subparsers(dest="action", required=True)
    replay = dlq.add_parser("replay", help="re-publish DLQ records to their original topics, each at most once")
    replay.add_argument("--topic", help="only records that came from this input topic (exact name)")
    replay.add_argument("--code", type=int, help="only records rejected with this error code")
    replay.add_argument("--org", type=int, help="only records whose command has exactly this orgId")
    replay.add_argument("--limit", type=_non_negative, help="replay at most this many; the rest stay replayable")
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed; change nothing")
    counters = sub.add_parser("counters", help="limit counters in Redis against MongoDB (docs/counters.md)"
                              ).add_subparsers(dest="action", required=True)
    for action, text in (("check", "print where Redis's counts differ from MongoDB's; exit 1 if any do"),
                         ("rebuild", "rebuild the counters from MongoDB now")):
        counter_cmd = counters.add_parser(action, help=text)
        counter_cmd.add_argument("--badge", help="only this badgeMetaId")
        counter_cmd.add_argument("--org", type=int, help="only badges of this orgId")
    sub.add_parser("api", help="serve the read API (CONTRACT.md section 6) on API_HOST:API_PORT until SIGTERM")
    keys = sub.add_parser("keys", help="per-org API keys of the read API").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key for an org; the key is printed once, only a hash is kept")
    create.add_argument("--org", type=int, required=True)
    create.add_argument("--name", default="", help="what the key is for")
    listing = keys.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--org", type=int)
    revoke = keys.add_parser("revoke", help="revoke a key by its key id")
    revoke.add_argument("key_id")
    customers = sub.add_parser("customers", help="the customer registry (X-CAP-CUSTOMER-IDENTIFIER)"
                               ).add_subparsers(dest="action", required=True)
    customers_load = customers.add_parser("load", help="upsert customers from JSON lines or a JSON list")
    customers_load.add_argument("file", type=Path)
    demo = sub.add_parser("demo", help="the main job: seed badges, sample commands, worker, outcome table")
    demo.add_argument("--seeds", type=Path, default=None, help="vendor API pages folder (default: packaged badges)")
    args = parser.parse_args(argv)

    try:
        settings = Settings()
    except ValidationError as exc:  # one JSON line naming each variable; the values stay hidden
        logs.configure()
        structlog.get_logger("badge_worker.cli").error(
            "invalid_settings", errors=[f"{'.'.join(map(str, e['loc'])).upper() or 'settings'}: {e['msg']}"
                                        for e in exc.errors()])
        return EX_CONFIG
    logs.configure(settings.log_level)

    if args.command == "run":
        from badge_worker.service.worker import run_worker

        asyncio.run(run_worker(settings))
        return 0
    if args.command == "badges":
        count = asyncio.run(load_badges(settings, args.files))
        print(f"loaded {count} badge definition(s) into {settings.mongodb_database}.badges")
        return 0
    if args.command == "api":
        from badge_worker.api.server import serve

        serve(settings)
        return 0
    if args.command == "keys":
        return asyncio.run(_keys(settings, args))
    if args.command == "customers":
        return asyncio.run(_load_customers(settings, args.file))
    if args.command == "dlq":
        from badge_worker.service.replay import ReplayConflict, ReplayFilter, replay_dlq

        try:
            report = asyncio.run(replay_dlq(settings, ReplayFilter(args.topic, args.code, args.org, args.limit),
                                            dry_run=args.dry_run))
        except ReplayConflict as exc:
            print(f"dlq replay stopped: {exc}; run it again when the other run is done", file=sys.stderr)
            return 1
        for item in report.items:
            print(json.dumps(item))
        verb = "would replay" if args.dry_run else "replayed"
        print(f"scanned {report.scanned}, {verb} {report.replayed}, skipped {report.skipped} (replayable later), "
              f"already replayed {report.already}, malformed {report.malformed}, pending {report.pending}",
              file=sys.stderr)
        return 0
    if args.command == "counters":
        from badge_worker.service.counters import run_check, run_rebuild

        run = run_check if args.action == "check" else run_rebuild
        return asyncio.run(run(settings, args.badge, args.org))
    if args.command == "demo":
        from badge_worker.demo import run_demo

        return asyncio.run(run_demo(settings, args.seeds))
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
