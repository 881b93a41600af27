"""Two revisions of the worker side by side: bench/run.py phases run alternately with the
worker of revision A and of revision B (git worktrees; the bench itself is this checkout's),
so that both see the same machine. On a shared 2-core host one run's rate moves by 30% or
more from one minute to the next; alternating and taking the median of the per-round
ratios is what makes a 10% change visible.

    .venv/bin/python bench/ab.py HEAD~3 HEAD                 # accept drain, 3 rounds
    .venv/bin/python bench/ab.py main my-branch --rounds 5 --only accept latency --rate 500
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^(?P<name>[A-Za-z0-9 ,]+?)\s{2,}(?P<earns>\d+)\s+(?P<secs>[\d.]+)\s+(?P<rate>\d+)\s+\S+\s+"
                 r"(?P<worker>[\d.]+)\s", re.M)
LATENCY = re.compile(r"^latency at \d+ earns/s offered .*: p50 (?P<p50>\d+) ms, p99 (?P<p99>\d+) ms", re.M)


def worktree(rev: str, into: Path) -> Path:
    path = into / re.sub(r"[^A-Za-z0-9._-]", "_", rev)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev],
                   check=True, capture_output=True)
    return path


def run_once(src: Path, phases: list[str], extra: list[str]) -> dict[str, float]:
    env = {**os.environ, "BENCH_WORKER_SRC": str(src / "src")}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--only", *phases, *extra],
                         env=env, capture_output=True, text=True, timeout=3600, check=False).stdout
    figures: dict[str, float] = {}
    for m in ROW.finditer(out):
        if m["name"].strip() != "bare ceiling":
            figures[f"{m['name'].strip()} earns/s"] = float(m["rate"])
            figures[f"{m['name'].strip()} worker ms/earn"] = float(m["worker"])
    if (lat := LATENCY.search(out)) is not None:
        figures["latency p50 ms"], figures["latency p99 ms"] = float(lat["p50"]), float(lat["p99"])
    if not figures:
        raise SystemExit(f"no figures in the bench output:\n{out[-2000:]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=["accept"])
    parser.add_argument("--rate", type=int)
    args = parser.parse_args()
    extra = ["--rate", str(args.rate)] if args.rate else []
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        trees = {args.a: worktree(args.a, Path(tmp)), args.b: worktree(args.b, Path(tmp))}
        try:
            rounds: list[tuple[dict[str, float], dict[str, float]]] = []
            for i in range(args.rounds):
                order = (args.a, args.b) if i % 2 == 0 else (args.b, args.a)  # neither always goes first
                got = {rev: run_once(trees[rev], args.only, extra) for rev in order}
                rounds.append((got[args.a], got[args.b]))
                print(f"round {i + 1}: " + "; ".join(
                    f"{k}: {got[args.a].get(k, float('nan')):g} -> {got[args.b].get(k, float('nan')):g}"
                    for k in got[args.a]), flush=True)
        finally:
            for path in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                               capture_output=True, check=False)
    print(f"\n{'figure':34} {'A ' + args.a:>16} {'B ' + args.b:>16} {'B/A (median of rounds)':>24}")
    for key in rounds[0][0]:
        a = [r[0][key] for r in rounds if key in r[0]]
        b = [r[1][key] for r in rounds if key in r[1]]
        ratios = [y / x for x, y in zip(a, b, strict=False) if x]
        print(f"{key:34} {statistics.median(a):>16g} {statistics.median(b):>16g} "
              f"{statistics.median(ratios) if ratios else float('nan'):>24.3f}")


if __name__ == "__main__":
    main()
