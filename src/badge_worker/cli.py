"""badge-worker: the badge earn processor and its operator tools. Settings come from the
environment (README.md lists them); `badge-worker COMMAND --help` shows each command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError
from pymongo import AsyncMongoClient

from badge_worker import logs, progress
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


async def store_badges(settings: Settings, badges: list[BadgeDefinition],
                       report: progress.Report | None = None) -> int:
    """Upsert definitions (and create the indexes the worker needs). A definition already
    stored is updated but keeps the claims recorded by claim commands, which live in their
    own documents (Repositories.upsert_badge); counters keep their counts unless a window shape changed
    (docs/counters.md)."""
    client: AsyncMongoClient = AsyncMongoClient(settings.mongodb_uri)  # type: ignore[type-arg]
    try:
        repos = Repositories(client[settings.mongodb_database])
        await repos.ensure_indexes()
        for done, badge in enumerate(badges, 1):
            try:
                await repos.upsert_badge(badge)
            except BadgeOfAnotherOrg as exc:
                raise SystemExit(f"{exc} (nothing after it was loaded)") from exc
            if report is not None:
                report(done, len(badges))
    finally:
        await client.close()
    return len(badges)


async def load_badges(settings: Settings, paths: list[Path]) -> int:
    badges = load_badge_files(paths)
    with progress.progress("badges") as report:
        return await store_badges(settings, badges, report)


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


EXIT_CODES = """exit codes:
  0   done (run/api: stopped by SIGTERM/SIGINT after draining)
  1   done, but something needs a look: counters differ, customers or a badge file were
      rejected, no such key, another dlq replay is running
  2   bad command line (usage)
  78  configuration error a restart does not fix: invalid settings, Kafka refused the
      credentials or the TLS handshake (one JSON line on stderr names it)"""

# Examples per command path; tests/unit/test_cli.py parses every one of them.
EXAMPLES: dict[str, list[str]] = {
    "": ["badge-worker run", "badge-worker badges load badges/*.json", "badge-worker dlq replay --code 500 --dry-run"],
    "run": ["KAFKA_BOOTSTRAP_SERVERS=kafka:9092 REDIS_URL=redis://redis:6379/0 badge-worker run"],
    "badges load": ["badge-worker badges load examples/badges.json",
                    "badge-worker badges load one.json two.json"],
    "dlq replay": ["badge-worker dlq replay --dry-run", "badge-worker dlq replay --code 500 --limit 100",
                   "badge-worker dlq replay --topic badges.earns --org 100458"],
    "counters check": ["badge-worker counters check", "badge-worker counters check --org 100458"],
    "counters rebuild": ["badge-worker counters rebuild --badge 6566f1a2b3c4d5e6f7a8b9c0"],
    "api": ["API_PORT=8080 badge-worker api"],
    "keys create": ["badge-worker keys create --org 100458 --name 'loyalty dashboard'"],
    "keys list": ["badge-worker keys list --org 100458"],
    "keys revoke": ["badge-worker keys revoke k_0123456789abcdef"],
    "customers load": ["badge-worker customers load customers.jsonl"],
    "demo": ["badge-worker demo", "badge-worker demo --seeds ./seeds"],
    "asyncapi": ["badge-worker asyncapi", "badge-worker asyncapi --check"],
}


def _epilog(path: str) -> str:
    lines = ["examples:", *(f"  {example}" for example in EXAMPLES[path])]
    return "\n".join(lines) + ("\n\n" + EXIT_CODES if not path else "")


def build_parser() -> argparse.ArgumentParser:
    from badge_worker import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="badge-worker", description=__doc__, epilog=_epilog(""),
                                     formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"badge-worker {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(parent: Any, name: str, path: str, text: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = parent.add_parser(name, help=text, description=text, epilog=_epilog(path),
                                                          formatter_class=fmt)
        return made

    def group(name: str, text: str) -> Any:
        return sub.add_parser(name, help=text, description=text).add_subparsers(dest="action", required=True)

    command(sub, "run", "run", "consume commands until SIGTERM/SIGINT, then drain and commit")
    badges = group("badges", "badge definitions")
    load = command(badges, "load", "badges load", "upsert definitions in the seed's Get-badge shape")
    load.add_argument("files", nargs="+", type=Path)
    dlq = group("dlq", "dead-letter queue")
    replay = command(dlq, "replay", "dlq replay", "re-publish DLQ records to their original topics, each at most once")
    replay.add_argument("--topic", help="only records that came from this input topic (exact name)")
    replay.add_argument("--code", type=int, help="only records rejected with this error code")
    replay.add_argument("--org", type=int, help="only records whose command has exactly this orgId")
    replay.add_argument("--limit", type=_non_negative, help="replay at most this many; the rest stay replayable")
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed; change nothing")
    counters = group("counters", "limit counters in Redis against MongoDB (docs/counters.md)")
    for action, text in (("check", "print where Redis's counts differ from MongoDB's; exit 1 if any do"),
                         ("rebuild", "rebuild the counters from MongoDB now")):
        counter_cmd = command(counters, action, f"counters {action}", text)
        counter_cmd.add_argument("--badge", help="only this badgeMetaId")
        counter_cmd.add_argument("--org", type=int, help="only badges of this orgId")
    command(sub, "api", "api", "serve the read API (CONTRACT.md section 6) on API_HOST:API_PORT until SIGTERM")
    keys = group("keys", "per-org API keys of the read API")
    create = command(keys, "create", "keys create", "create a key for an org; the key is printed once, only a hash "
                     "is kept")
    create.add_argument("--org", type=int, required=True)
    create.add_argument("--name", default="", help="what the key is for")
    listing = command(keys, "list", "keys list", "list keys (never their secrets)")
    listing.add_argument("--org", type=int)
    revoke = command(keys, "revoke", "keys revoke", "revoke a key by its key id")
    revoke.add_argument("key_id")
    customers = group("customers", "the customer registry (X-CAP-CUSTOMER-IDENTIFIER)")
    customers_load = command(customers, "load", "customers load", "upsert customers from JSON lines or a JSON list")
    customers_load.add_argument("file", type=Path)
    demo = command(sub, "demo", "demo", "the main job: seed badges, sample commands, worker, outcome table")
    demo.add_argument("--seeds", type=Path, default=None, help="vendor API pages folder (default: packaged badges)")
    asyncapi = command(sub, "asyncapi", "asyncapi", "write docs/asyncapi.yaml and docs/schemas from the code "
                       "(a source checkout)")
    asyncapi.add_argument("--check", action="store_true", help="change nothing; exit 1 if a committed file differs")
    return parser


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
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
        from badge_worker.runtime import tune_gc
        from badge_worker.service.worker import run_worker

        tune_gc(settings.gc_young_threshold)  # once the modules are imported: they are frozen
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
            with progress.progress("dlq offsets") as show:
                report = asyncio.run(replay_dlq(settings, ReplayFilter(args.topic, args.code, args.org, args.limit),
                                                dry_run=args.dry_run, progress=show))
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
    if args.command == "asyncapi":
        from badge_worker import asyncapi as asyncapi_doc

        return asyncapi_doc.main(["--check"] if args.check else [])
    if args.command == "demo":
        from badge_worker.demo import run_demo

        return asyncio.run(run_demo(settings, args.seeds))
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
