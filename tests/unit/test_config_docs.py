"""docs/config.md stays in step with the config models (SPEC §9: every key documented)."""

from __future__ import annotations

import re
from pathlib import Path

from banger.config.settings import CONFIG_PATH_ENV, config_keys, env_keys, env_var_for, load_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def first_column(markdown: str) -> list[str]:
    return re.findall(r"^\| `([^`]+)` \|", markdown, flags=re.MULTILINE)


def test_every_config_key_is_in_the_table_and_nothing_else() -> None:
    documented = first_column(section("Keys").split("\n### ")[0])
    assert len(documented) == len(set(documented)), "a key has two rows"
    missing = sorted(set(config_keys()) - set(documented))
    unknown = sorted(set(documented) - set(config_keys()))
    assert not missing, f"keys missing from docs/config.md: {missing}"
    assert not unknown, f"docs/config.md documents keys that do not exist: {unknown}"


def test_table_rows_have_type_default_and_meaning() -> None:
    for line in section("Keys").splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            assert len(cells) == 4 and all(cells), line


def test_every_env_override_is_documented() -> None:
    documented = set(first_column(section("Environment overrides")))
    expected = {env_var_for(key) for key in env_keys()} | {CONFIG_PATH_ENV}
    assert documented == expected


def test_example_config_loads(tmp_path: Path) -> None:
    example = section("Example").split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "config.toml"
    path.write_text(example, encoding="utf-8")
    path.chmod(0o600)
    config = load_config(path, env={"HOME": str(tmp_path)})
    assert config.vm_defaults.memory_mib == 4096
    assert len(config.file_sync) == 2
