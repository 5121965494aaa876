"""Golden files (hledger's shelltests, in Python): ``tests/golden/<case>/`` holds

* ``cmd``       — the command line after ``channel-ledger`` (shell words, run in the case folder;
                  ``{store}`` is a fresh store URL); lines starting with ``setup:`` run first;
* ``stdout``    — the expected standard output, byte for byte;
* ``exit_code`` — the expected exit code (0 when absent);
* any input files the command names.

Run with ``UPDATE_GOLDEN=1`` to rewrite ``stdout`` and ``exit_code`` from what the command prints
now (then read the diff before committing it).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    name: str
    folder: Path


def cases() -> list[Case]:
    return [Case(p.name, p) for p in sorted(GOLDEN.iterdir()) if (p / "cmd").exists()]


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A person's terminal: a fixed width, no colour, no store from the environment."""
    full_env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb", **(env or {})}
    full_env.pop("CHANNEL_LEDGER_STORE", None)
    return full_env


def run_cli(
    args: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``channel-ledger`` as a person would: a separate process, a fixed terminal width."""
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        input=stdin,
        capture_output=True,
        env=cli_env(env),
        cwd=cwd or ROOT,
        timeout=600,
    )


def seconds_of_cli(args: list[str]) -> float:
    """Wall time of one uninterrupted run of a command that succeeds: crash tests place their
    kills at fractions of it, so they land mid-run on a fast machine and on a slow one."""
    started = time.monotonic()
    done = run_cli(args)
    assert done.returncode == 0, done.stderr.decode()
    return time.monotonic() - started


def killed_after(args: list[str], delay: float) -> bool:
    """Start a command, SIGKILL it ``delay`` seconds later if it is still running, wait for it;
    whether it was killed mid-run."""
    process = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=cli_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    running = process.poll() is None
    if running:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=120)
    return running


def check(case: Case, store_url: str) -> None:
    lines = [line for line in (case.folder / "cmd").read_text(encoding="utf-8").splitlines() if line.strip()]
    fill = {"store": store_url}
    *setup, main = lines
    for step in setup:
        args = shlex.split(step.removeprefix("setup:").strip().format(**fill))
        done = run_cli(args, cwd=case.folder)
        assert done.returncode == 0, f"setup step failed: {step}\n{done.stderr.decode()}"
    done = run_cli(shlex.split(main.format(**fill)), cwd=case.folder)
    stdout = done.stdout.decode("utf-8").replace(store_url, "{store}")
    expected_out = case.folder / "stdout"
    expected_code = case.folder / "exit_code"
    if os.environ.get("UPDATE_GOLDEN"):
        expected_out.write_text(stdout, encoding="utf-8")
        expected_code.write_text(f"{done.returncode}\n")
    assert stdout == expected_out.read_text(encoding="utf-8"), done.stderr.decode()
    code = int(expected_code.read_text()) if expected_code.exists() else 0
    assert done.returncode == code, done.stderr.decode()
