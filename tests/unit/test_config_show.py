"""`banger config show` as printed (issue 14 items 14 and 19): the FILE's keys, each a
documented key of docs/config.md, no Python reprs, and the same keys and sources in text
and `--json`. No daemon runs in these tests (the layout's socket does not exist)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from banger.cli.config_view import DaemonView, config_show
from banger.config import listing
from banger.config.settings import load_config
from banger.errors import ConfigError
from banger.host.paths import Layout

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"

#: A config that sets every kind of key: tables, both arrays of tables, env, unset ones.
FULL = """\
log_level = "debug"
qemu_bin = "/usr/bin/qemu-system-x86_64"
default_image_name = "alpine"
auto_stop_stale_after = "2h"
default_dns = ["8.8.8.8"]
pool_size = 2

[vm_defaults]
vcpu = 2
disk_size = "16G"

[[file_sync]]
host = "~/.gitconfig"
guest = "~/.gitconfig"
mode = "0644"

[[file_sync]]
host = "~/.config/nvim"
guest = "/root/.config/nvim"

[[pool]]
image = "alpine"
size = 2
memory_mib = 512
"""


def documented_keys() -> set[str]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("\n## Keys\n")
    table = text[start : text.index("\n### ", start)]
    return set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE))


def layout_in(tmp_path: Path) -> Layout:
    return Layout(
        config_dir=tmp_path / "config",
        state_dir=tmp_path / "state",
        cache_dir=tmp_path / "cache",
        runtime_dir=tmp_path / "run",
    )


def show(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str | None, *, as_json: bool
) -> str:
    layout = layout_in(tmp_path)
    if config is not None:
        layout.config_file.parent.mkdir(parents=True, exist_ok=True)
        layout.config_file.write_text(config)
        layout.config_file.chmod(0o600)
    env = {"HOME": str(tmp_path / "home"), "BANGER_TAP_POOL_SIZE": "8"}
    config_show(layout, as_json=as_json, env=env)
    return capsys.readouterr().out


def text_rows(out: str) -> dict[str, tuple[str, str]]:
    """key -> (value text, source) of each key line; the two labels are checked apart."""
    lines = out.splitlines()
    assert lines[0].startswith("config file: ")
    assert lines[-1].startswith("daemon:")
    rows = {}
    for line in lines[1:-1]:
        found = re.fullmatch(r"(\S+): +(.*)  \[(file|env|default)\]", line)
        assert found, f"not a `key: value  [source]` line: {line!r}"
        rows[found.group(1)] = (found.group(2), found.group(3))
    return rows


def is_documented(key: str, documented: set[str]) -> bool:
    """``file_sync[1].host`` is ``file_sync.host``; an empty ``file_sync`` is its table."""
    plain = re.sub(r"\[\d+\]", "", key)
    return plain in documented or any(d.startswith(plain + ".") for d in documented)


@pytest.mark.parametrize("config", [FULL, None, ""], ids=["full", "missing", "empty"])
def test_every_printed_key_is_documented_in_docs_config_md(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str | None
) -> None:
    documented = documented_keys()
    rows = text_rows(show(tmp_path, capsys, config, as_json=False))
    assert rows
    undocumented = [key for key in rows if not is_documented(key, documented)]
    assert not undocumented, f"config show prints keys docs/config.md lacks: {undocumented}"


def test_the_check_above_can_fail() -> None:
    documented = documented_keys()
    assert not is_documented("ssh_key_file", documented)
    assert not is_documented("auto_stop_stale_after_s", documented)
    assert not is_documented("vm_defaults.disk_size_bytes", documented)
    assert is_documented("file_sync[3].mode", documented)


def test_text_shows_the_file_without_python_reprs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = show(tmp_path, capsys, FULL, as_json=False)
    for repr_mark in ("None", "'", "{", "[]", "True", "False"):
        assert repr_mark not in out, f"{repr_mark!r} in:\n{out}"
    rows = text_rows(out)
    assert rows["log_level"] == ("debug", "file")
    assert rows["tap_pool_size"] == ("8", "env")
    assert rows["bridge_name"] == ("banger0", "default")
    assert rows["firecracker_bin"] == ("(unset)", "default")
    assert rows["default_dns"] == ("8.8.8.8", "file")
    assert rows["vm_defaults.vcpu"] == ("2", "file")
    assert rows["vm_defaults.memory_mib"] == ("(unset)", "default")
    assert rows["file_sync[1].guest"] == ("/root/.config/nvim", "file")
    assert rows["file_sync[1].mode"] == ("(unset)", "file")
    assert rows["pool[0].memory_mib"] == ("512", "file")
    last = out.splitlines()[-1].split(None, 1)
    assert last == ["daemon:", "not running (it reads this file when it starts)"]


def test_no_entries_is_one_line_per_array_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = text_rows(show(tmp_path, capsys, None, as_json=False))
    assert rows["file_sync"] == ("(no entries)", "default")
    assert rows["pool"] == ("(no entries)", "default")
    assert not any(key.startswith(("file_sync[", "pool[")) for key in rows)


def test_text_and_json_name_the_same_keys_with_the_same_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: text said `vm_defaults … [default]` while JSON said `file`."""
    rows = text_rows(show(tmp_path, capsys, FULL, as_json=False))
    data = json.loads(show(tmp_path, capsys, FULL, as_json=True))
    assert list(data["values"]) == list(rows) == list(data["sources"])
    assert {key: source for key, (_, source) in rows.items()} == data["sources"]
    assert data["values"]["vm_defaults.vcpu"] == 2
    assert data["values"]["vm_defaults.memory_mib"] is None
    assert data["values"]["file_sync[0].mode"] == "0644"
    assert data["path"].endswith("config.toml") and data["exists"] is True
    assert data["daemon"] is None


def test_an_invalid_file_is_an_error_naming_key_file_and_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        show(tmp_path, capsys, "[vm_defaults]\nmemory_mib = -1\n", as_json=False)
    err = info.value
    assert "vm_defaults.memory_mib" in err.brief
    assert err.hint and str(layout_in(tmp_path).config_file) in err.hint
    assert capsys.readouterr().out == ""


def test_differing_settings_name_tables_once(tmp_path: Path) -> None:
    def rows_of(text: str) -> list[listing.Row]:
        path = tmp_path / "c.toml"
        path.write_text(text)
        path.chmod(0o600)
        config = load_config(path, env={"HOME": str(tmp_path)})
        return listing.rows(config.model_dump(mode="json"), config.sources)

    old = rows_of('[vm_defaults]\nvcpu = 2\n[[file_sync]]\nhost = "~/a"\nguest = "~/a"\n')
    new = rows_of(
        '[vm_defaults]\nvcpu = 3\n[[file_sync]]\nhost = "~/a"\nguest = "~/a"\n'
        '[[file_sync]]\nhost = "~/b"\nguest = "~/b"\n'
    )
    assert listing.differing_settings(new, old) == ["vm_defaults.vcpu", "file_sync"]
    assert listing.differing_settings(old, old) == []
    # Derived numbers a daemon's reply adds are not keys: they never count as a change.
    config = load_config(tmp_path / "none.toml", env={"HOME": str(tmp_path)})
    plain = listing.rows(config.model_dump(mode="json"), config.sources)
    display = listing.rows(config.as_display_dict(), config.sources)
    assert listing.differing_settings(plain, display) == []


def test_daemon_line_names_the_keys_and_the_restart() -> None:
    path = Path("/c/config.toml")
    differs = DaemonView(7, True, str(path), ["vm_defaults.vcpu", "file_sync"])
    assert differs.describe(path) == (
        "pid 7 started with other values for vm_defaults.vcpu, file_sync; "
        "`banger daemon restart` applies this file (running VMs keep running)"
    )
    assert differs.as_json()["restart_needed"] is True
    same = DaemonView(7, True, str(path), [])
    assert same.describe(path) == "pid 7 uses these values"
    assert same.as_json()["restart_needed"] is False
    other = DaemonView(7, True, "/elsewhere.toml", [])
    assert other.describe(path) == "pid 7 uses these values (it read /elsewhere.toml)"
    assert "restarts it with this file" in DaemonView(7, False).describe(path)


def test_values_render_for_people() -> None:
    assert listing.format_value(None) == "(unset)"
    assert listing.format_value([]) == "(none)"
    assert listing.format_value(["1.1.1.1", "9.9.9.9"]) == "1.1.1.1, 9.9.9.9"
    assert listing.format_value(4) == "4"
    assert listing.format_value("~/a b") == "~/a b"
    assert listing.format_value("~/a\nb") == '"~/a\\nb"'
