"""The package layout is the architecture (docs/explanation/architecture.md): every import
inside ``src/banger`` points down the rank table below, and no two packages import each
other, directly or through others. Imports inside functions count too (they are still
dependencies); ``if TYPE_CHECKING:`` imports count as well.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "banger"

#: Lower ranks are imported by higher ones, never the other way round. Packages of one
#: rank may import each other as long as no cycle forms.
RANKS: dict[str, int] = {
    "errors": 0,
    "_build_info": 0,  # generated at build time: version, commit, build time
    "model": 1,
    "host": 2,
    "config": 2,
    "oci": 3,
    "images": 3,
    "kernels": 3,
    "disks": 3,
    "net": 3,
    "dns": 3,
    "vmm": 3,
    "guest": 3,
    "workspace": 3,
    "state": 3,
    "services": 4,
    # banger-helper, the root helper: errors, model, host and net only (checked below).
    "helper": 4,
    # `banger system`: the units of helper and owner daemon (root, in the CLI process).
    "system": 4,
    "api": 5,
    "daemon": 6,
    "client": 5,  # the daemon's client and launcher: CLI, SDK and MCP server share it
    "cli": 6,
    # ``python -m banger.sshconfig`` shim for installed ssh configs: calls the CLI's code.
    "sshconfig": 6,
    # The Python SDK (``Sandbox``) and the MCP server built on it: clients like the CLI.
    "sdk": 6,
    "mcp_server": 6,
    # The package root's own ``__init__``: its lazy ``from banger import Sandbox``.
    "": 7,
}

#: (importer package, imported package) pairs tolerated for now. Must be empty.
ALLOWED: set[tuple[str, str]] = set()


def _package_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "banger", module
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "banger":
                for alias in node.names:
                    yield f"banger.{alias.name}"
            else:
                yield node.module


def _edges() -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "_build_info.py":
            continue
        here = _package_of(_module_name(path))
        for target in _imports(path):
            if not target.startswith("banger.") and target != "banger":
                continue
            there = _package_of(target)
            if there in ("", here):
                continue
            edges.setdefault((here, there), []).append(str(path.relative_to(SRC)))
    return edges


def test_the_package_root_holds_only_the_error_tree_and_the_shim() -> None:
    loose = {p.name for p in SRC.glob("*.py")} - {"_build_info.py"}
    assert loose == {"__init__.py", "errors.py", "sshconfig.py"}


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(RANKS), sorted(packages - set(RANKS))


def test_imports_point_down() -> None:
    upward = [
        f"{here} -> {there} ({', '.join(sorted(set(files)))})"
        for (here, there), files in sorted(_edges().items())
        if (here, there) not in ALLOWED and RANKS[there] > RANKS[here]
    ]
    assert upward == []


def test_no_package_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for here, there in _edges():
        if (here, there) not in ALLOWED:
            graph.setdefault(here, set()).add(there)
    cycles = []
    for start in sorted(graph):
        seen: set[str] = set()
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    cycles.append(" -> ".join([*trail, nxt]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    assert cycles == []


@pytest.mark.parametrize("package", ["model"])
def test_model_is_stdlib_only(package: str) -> None:
    """The model layer does no I/O: nothing of banger but the error tree, no third party."""
    allowed_third_party: set[str] = set()
    bad = []
    for path in sorted((SRC / package).rglob("*.py")):
        for target in _imports(path):
            top = target.split(".")[0]
            if top == "banger":
                if _package_of(target) not in ("errors", package):
                    bad.append(f"{path.name}: {target}")
            elif top not in _STDLIB and top not in allowed_third_party:
                bad.append(f"{path.name}: {target}")
    assert bad == []


#: Basenames several modules may share: package and entry-point files, whose name says
#: their role rather than what they own.
SHARED_BASENAMES = frozenset({"__init__.py", "__main__.py", "main.py"})


def test_module_basenames_are_unique() -> None:
    """A module is named for what it owns, so no two own the same thing: ``catalog.py`` in
    three packages made every import and traceback ambiguous."""
    seen: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(SRC)))
    clashes = {
        name: paths
        for name, paths in seen.items()
        if len(paths) > 1 and name not in SHARED_BASENAMES
    }
    assert clashes == {}


#: Test modules still imported by another test module; must be empty. test_exec.py (from
#: main, 14:58 on the day of the clean-up) boots its guest with test_agent.py's helpers.
TEST_IMPORTS_TO_MOVE: frozenset[str] = frozenset()


def test_tests_import_helpers_not_other_tests() -> None:
    """Shared test code lives in helper modules under ``tests/`` (``tests/gitrepos.py``…):
    a test module is not a library, and importing one ties two test files together."""
    tests = SRC.parents[1] / "tests"
    suites = (["tests", "unit"], ["tests", "component"], ["tests", "e2e"])
    bad = []
    for path in sorted(tests.rglob("test_*.py")):
        for target in _imports(path):
            if target.split(".")[:2] in suites and target not in TEST_IMPORTS_TO_MOVE:
                bad.append(f"{path.relative_to(tests)}: {target}")
    assert bad == []


def test_allow_list_is_empty() -> None:
    assert not ALLOWED


_STDLIB = frozenset(__import__("sys").stdlib_module_names) | {"__future__"}


#: What the root helper may import of banger: it runs the same privileged code as the root
#: daemon, and nothing of the daemon's web/CLI stack (SPEC §9: a small root program).
HELPER_MAY_IMPORT = frozenset({"errors", "model", "host", "net", "helper"})


def test_helper_imports_only_the_lower_layers() -> None:
    bad = sorted(
        f"{path.relative_to(SRC)}: {target}"
        for path in (SRC / "helper").rglob("*.py")
        for target in _imports(path)
        if target.split(".")[0] == "banger" and _package_of(target) not in HELPER_MAY_IMPORT
    )
    assert bad == []


def test_helper_loads_no_daemon_or_cli_dependency() -> None:
    """Importing banger-helper (and the client seam) loads stdlib and pyroute2 only."""
    import subprocess
    import sys

    code = (
        "import sys, banger.helper.main, banger.net.helper_client;"
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    # CPython's accelerator modules, and the site hooks an installation may add.
    private = {m for m in out if m.startswith("_")} | {"sitecustomize", "usercustomize"}
    third_party = sorted(set(out) - _STDLIB - private - {"banger", "pyroute2"})
    assert "banger" in out and "pyroute2" in out
    assert third_party == []
    assert not {"pydantic", "fastapi", "click", "rich", "uvicorn", "httpx"} & set(out)
