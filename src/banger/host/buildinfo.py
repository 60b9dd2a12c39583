"""The build stamp (version, commit, build time) shared by CLI and daemon.

Owns: reading the stamp written by ``hatch_build.py`` at install time. The CLI
compares its stamp with the daemon's ping to restart a daemon of another build.
Must not: run git or anything slow; it is on the CLI's start-up path.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str
    build_time: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def token(self) -> str:
        """One line naming this build: the ``Banger-Build`` header a client may send with
        ``vm exec`` so that a daemon of another build refuses before running anything."""
        return f"{self.version} {self.commit} {self.build_time}"

    def describe(self) -> str:
        return f"{self.version} (commit {self.commit}, built {self.build_time})"


def current() -> BuildInfo:
    try:
        from banger import _build_info  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        # Running from a source tree that was never installed: say so rather than guess.
        return BuildInfo(version="0+unknown", commit="unknown", build_time="unknown")
    return BuildInfo(
        version=str(_build_info.VERSION),
        commit=str(_build_info.COMMIT),
        build_time=str(_build_info.BUILD_TIME),
    )
