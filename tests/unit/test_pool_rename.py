"""The claim's rename script (``pool_claim.rename_script``) in the shells guests have:
dash (Debian's sh), bash, and busybox's ash (the tiny guest), against a directory
standing for the guest's /, with no PATH at all: shell builtins only (under TCG every
program started costs tens of milliseconds of a claim).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from banger.services.pool_claim import rename_argv, rename_script
from tests.localshell import SHELLS

HOSTS_CASES = {
    "debian": (
        "127.0.0.1\tlocalhost\n127.0.1.1\tpool-1a2b\n\n# The following lines\n::1 ip6-localhost\n",
        "127.0.0.1\tlocalhost\n127.0.1.1 web\n\n# The following lines\n::1 ip6-localhost\n",
    ),
    "no line": ("127.0.0.1 localhost\n", "127.0.0.1 localhost\n127.0.1.1 web\n"),
    "no final newline": ("127.0.1.1 old  old.example\n  x\\y", "127.0.1.1 web\n  x\\y\n"),
    "empty": ("", "127.0.1.1 web\n"),
    "lookalike": ("127.0.1.10 other\n", "127.0.1.10 other\n127.0.1.1 web\n"),
}


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("case", list(HOSTS_CASES))
def test_the_name_reaches_hostname_and_hosts_with_builtins_only(
    tmp_path: Path, shell: list[str], case: str
) -> None:
    before, after = HOSTS_CASES[case]
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/hostname").write_text("pool-1a2b\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("pool-1a2b\n")
    (tmp_path / "etc/hosts").write_text(before)
    subprocess.run(
        [*shell, "-c", rename_script(str(tmp_path)), "sh", "web"],
        env={"PATH": str(tmp_path / "no-programs")},
        check=True,
        timeout=10,
    )
    assert (tmp_path / "proc/sys/kernel/hostname").read_text() == "web\n"
    assert (tmp_path / "etc/hostname").read_text() == "web\n"
    assert (tmp_path / "etc/hosts").read_text() == after


def test_a_failed_step_fails_the_rename(tmp_path: Path) -> None:
    sh = shutil.which("dash") or "sh"
    # No /etc/hosts to read: the claim must hear of it (it then discards the VM).
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        [sh, "-c", rename_script(str(tmp_path)), "sh", "web"], check=False, timeout=10
    )
    assert done.returncode != 0


def test_the_argv_passes_the_name_as_an_argument_not_in_the_script() -> None:
    argv = rename_argv("web")
    assert argv[:2] == ["sh", "-c"] and argv[-2:] == ["sh", "web"]
    assert "web" not in argv[2]
