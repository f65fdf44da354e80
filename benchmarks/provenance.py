"""Which modelpress a benchmark measured: shared by the hand-run scripts in this folder."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def code_state() -> dict:
    """The modelpress_cli folder measured, its git commit and its uncommitted changes."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                                  text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--", "modelpress_cli") if commit else None
    return {"modelpress_path": str(ROOT / "modelpress_cli"), "commit": commit,
            "uncommitted_changes": changed.splitlines() if changed else []}
