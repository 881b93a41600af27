"""The domain package is pure: it imports no Kafka, Redis or MongoDB client, and no I/O."""

import ast
from pathlib import Path

import badge_worker.domain

FORBIDDEN = ("aiokafka", "kafka", "redis", "pymongo", "bson", "motor", "socket", "asyncio", "badge_worker.adapters",
             "badge_worker.service")


def test_domain_imports_nothing_from_the_clients() -> None:
    folder = Path(badge_worker.domain.__file__).parent
    files = sorted(folder.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not any(name == f or name.startswith(f + ".") for f in FORBIDDEN), f"{path.name}: {name}"
