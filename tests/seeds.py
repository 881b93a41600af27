"""Where the contract's seed pages are, for the tests."""

from __future__ import annotations

from pathlib import Path

from badge_worker.seedpages import default_seeds_dir

REPO = Path(__file__).resolve().parents[1]


def seeds_dir() -> Path:
    folder = default_seeds_dir() or (REPO.parent / "shared" / "seeds")
    if not folder.is_dir():
        raise FileNotFoundError("seed pages not found; set BADGE_SEEDS_DIR")
    return folder
