"""Build hook: stamps version, git commit and build time into banger/_build_info.py.

The CLI and the daemon compare this stamp to decide whether a running daemon is
of another build and must be restarted (SPEC §1).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{out}-dirty" if dirty else out


class BuildInfoHook(BuildHookInterface):  # type: ignore[misc]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        root = Path(self.root)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        text = (
            '"""Generated at build time by hatch_build.py; do not edit."""\n\n'
            f"VERSION = {self.metadata.version!r}\n"
            f"COMMIT = {_git_commit(root)!r}\n"
            f"BUILD_TIME = {stamp!r}\n"
        )
        (root / "src" / "banger" / "_build_info.py").write_text(text, encoding="utf-8")
