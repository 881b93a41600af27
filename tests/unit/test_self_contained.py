"""The project carries its own data: a clone anywhere runs its tests and its demo.

The vendor examples live in tests/fixtures/vendor_examples (tests) and in the package's
data/vendor_badges.json (demo); nothing may reach for folders beside the repository.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from badge_worker import seedpages
from badge_worker.cli import load_badge_files
from badge_worker.demo import seed_badges
from badge_worker.seedpages import badges_of, default_seeds_dir, packaged_badges
from tests.seeds import FIXTURES, all_examples, vendor_examples

REPO = Path(__file__).resolve().parents[2]
# a path out of the repository to the neighbouring folder of pages, however it is spelled
OUTSIDE = re.compile(r"\.\./shared|shared\W{0,6}seeds|[\"']shared[\"']")
# the same words, spelled so that this file does not match them
UP, NEXT_DOOR, PAGES_DIR = "..", "sha" + "red", "se" + "eds"
SKIPPED_DIRS = {"__pycache__"}
SKIPPED_FILES = {FIXTURES / "README.md"}  # says where the data came from

PAGES = {"claim-badge", "get-badge-by-id", "get-badges-for-customer", "issue-badge-earn", "issue-badge-earn-plain"}
PAGE = """Get badge (a made-up page)

Prose with a truncated snippet: "data": { "id": "x" and a stray } then a complete one:
{"data": {"id": "b-1", "orgId": 7, "earnType": "EARN", "customerConstraints": []}}
and a later copy of it: {"data": {"id": "b-1", "orgId": 7, "earnType": "ISSUE_EARN"}}
{"ownerType": "Loyalty", "referenceId": "r"}
"""


def project_files() -> list[Path]:
    files = []
    for top in ("src", "tests"):
        for path in sorted((REPO / top).rglob("*")):
            parts = set(path.relative_to(REPO).parts)
            if (parts & SKIPPED_DIRS or any(p.startswith(".") or p.endswith(".egg-info") for p in parts)
                    or not path.is_file() or path in SKIPPED_FILES or path.suffix == ".pyc"):
                continue
            files.append(path)
    return files


def test_nothing_reaches_outside_the_repository() -> None:
    files = project_files()
    assert REPO / "src" / "badge_worker" / "seedpages.py" in files
    assert Path(__file__).resolve() in files
    offenders = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
                 for path in files
                 for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
                 if OUTSIDE.search(line)]
    assert offenders == []


def test_the_outside_pattern_catches_the_usual_spellings() -> None:
    for line in (f"{UP}/{NEXT_DOOR}/{PAGES_DIR}", f'Path.cwd().parent / "{NEXT_DOOR}" / "{PAGES_DIR}"',
                 f"REPO.parent.joinpath('{NEXT_DOOR}', '{PAGES_DIR}')", f"default {UP}/{NEXT_DOOR}",
                 f"{NEXT_DOOR} / {PAGES_DIR}", NEXT_DOOR + "\\" + PAGES_DIR):
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search("counters shared by workers")


def test_every_page_has_its_fixture() -> None:
    pages = vendor_examples()
    assert set(pages) == PAGES
    assert all(isinstance(objects, list) for objects in pages.values())
    assert all(isinstance(obj, dict) for obj in all_examples())
    assert pages["issue-badge-earn-plain"] == []  # that copy of the page has no complete object
    assert (FIXTURES / "README.md").is_file()


def test_packaged_badges_are_the_fixtures_badges() -> None:
    packaged = [b.to_document() for b in packaged_badges()]
    assert packaged == [b.to_document() for b in badges_of(all_examples())]
    assert len(packaged) == 10
    assert "662724bb8fe258516a88fde2" in {b["id"] for b in packaged}  # the demo's ended seed badge


def test_packaged_badges_are_declared_as_package_data() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["badge_worker"]
    data = REPO / "src" / "badge_worker" / "data"
    assert any(data.glob(pattern.removeprefix("data/")) for pattern in patterns if pattern.startswith("data/"))
    # the file is a plain list of definitions: `badge-worker badges load` takes it as well
    assert len(load_badge_files([data / "vendor_badges.json"])) == 10


def test_no_default_pages_folder_without_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    neighbour = tmp_path / NEXT_DOOR / PAGES_DIR
    neighbour.mkdir(parents=True)
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    monkeypatch.delenv("BADGE_SEEDS_DIR", raising=False)
    assert default_seeds_dir() is None
    assert [b.id for b in seed_badges(None)] == [b.id for b in packaged_badges()]
    monkeypatch.setenv("BADGE_SEEDS_DIR", str(tmp_path / "missing"))
    assert default_seeds_dir() is None
    monkeypatch.setenv("BADGE_SEEDS_DIR", str(neighbour))
    assert default_seeds_dir() == neighbour


def test_demo_reads_a_pages_folder_given_explicitly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BADGE_SEEDS_DIR", raising=False)
    (tmp_path / "get-badge.md").write_text(PAGE, encoding="utf-8")
    [badge] = seed_badges(tmp_path)
    assert (badge.id, badge.earnType.name) == ("b-1", "ISSUE_EARN")  # the last example of an id wins
    with pytest.raises(SystemExit):
        seed_badges(tmp_path / "missing")


def test_extraction_tool_writes_fixtures_and_badges(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pages, dest, out = tmp_path / "pages", tmp_path / "fixtures", tmp_path / "data" / "badges.json"
    pages.mkdir()
    (pages / "get-badge.md").write_text(PAGE, encoding="utf-8")
    (pages / "prose-only.txt").write_text('no object here: "a": 1 }', encoding="utf-8")
    assert seedpages.main(["extract", str(pages), str(dest)]) == 0
    assert sorted(p.name for p in dest.iterdir()) == ["get-badge.json", "prose-only.json"]
    assert json.loads((dest / "prose-only.json").read_text(encoding="utf-8")) == []
    assert json.loads((dest / "get-badge.json").read_text(encoding="utf-8")) == [
        {"data": {"id": "b-1", "orgId": 7, "earnType": "EARN", "customerConstraints": []}},
        {"data": {"id": "b-1", "orgId": 7, "earnType": "ISSUE_EARN"}},
        {"ownerType": "Loyalty", "referenceId": "r"},
    ]
    assert seedpages.main(["badges", str(pages), str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8")) == [{"id": "b-1", "orgId": 7, "earnType": "ISSUE_EARN"}]
    assert "1 badge definition(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        seedpages.main(["extract", str(tmp_path / "missing"), str(dest)])
