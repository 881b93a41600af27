"""The command line: --version, help with examples that really parse, documented exit codes."""

from __future__ import annotations

import argparse
import io
import shlex
import subprocess
import sys
from importlib.metadata import version

import pytest

from badge_worker import cli, progress


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"badge-worker {version('badge-worker')}"


def command_paths(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every runnable command ('badges load', 'run', ...) with its parser."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                path = f"{prefix} {name}".strip()
                found.update(command_paths(child, path) or {path: child})
    return found


def test_every_command_has_examples_and_every_example_parses() -> None:
    parser = cli.build_parser()
    paths = command_paths(parser)
    assert set(paths) == set(cli.EXAMPLES) - {""}  # no command without examples, no stale examples
    for path, examples in cli.EXAMPLES.items():
        assert examples, path
        for example in examples:
            words = shlex.split(example)
            while "=" in words[0]:  # leading VAR=value settings of the example
                words.pop(0)
            assert words[0] == "badge-worker", example
            args = parser.parse_args(words[1:])  # raises SystemExit(2) if an example is wrong
            if path:
                assert " ".join(filter(None, [args.command, getattr(args, "action", None)])) == path, example
        if path:
            assert all(e in paths[path].format_help() for e in examples)


def test_the_main_help_documents_the_exit_codes() -> None:
    text = cli.build_parser().format_help()
    for code in ("0", "1", "2", str(cli.EX_CONFIG)):
        assert f"\n  {code} " in text


def test_a_bad_command_line_exits_2_and_invalid_settings_exit_78() -> None:
    bad = subprocess.run([sys.executable, "-m", "badge_worker.cli", "dlq", "replay", "--limit", "-3"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be >= 0" in bad.stderr
    env = {"PATH": "/usr/bin:/bin", "BATCH_MAX_RECORDS": "not-a-number"}
    invalid = subprocess.run([sys.executable, "-m", "badge_worker.cli", "counters", "check"],
                             capture_output=True, text=True, timeout=60, env=env)
    assert invalid.returncode == cli.EX_CONFIG and "BATCH_MAX_RECORDS" in invalid.stderr


def test_progress_is_silent_in_a_pipe_and_a_bar_on_a_terminal() -> None:
    piped = io.StringIO()
    with progress.progress("badges", piped) as report:
        report(3, 10)
    assert piped.getvalue() == ""
    terminal = io.StringIO()
    with progress.progress("badges", terminal, force_terminal=True) as report:
        for done in range(1, 11):
            report(done, 10)
    assert "badges" in terminal.getvalue() and "10/10" in terminal.getvalue()
