"""Finding a kernel's artifacts in a directory (SPEC §6, ``banger kernel import --from``).

Owns: the search order and its rules. A metadata file comes first
(``banger-kernel.json``, else ``manifest.json``, the store's own manifest, so a kernel
directory of another banger or an unpacked catalog tarball imports as is); then the
conventional names, at the top and under ``boot/``: ``vmlinux``/``vmlinux-*`` (ELF),
``vmlinuz``/``vmlinuz-*``/``bzImage``, ``initrd*``/``initramfs*``, and the modules tree
``lib/modules/<version>`` (also ``usr/lib/modules/<version>`` and the store's
``modules/``). Several candidates of one kind are an error that lists them; the version
comes from the metadata, else a ``-<version>`` file name suffix, else the modules
directory's name.
Must not: follow a symlink that leads outside the directory (such entries are skipped
and reported when nothing usable is found), read more than a header of any file, or
copy anything.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from banger.errors import InvalidArgument
from banger.kernels.vmlinux import KernelFormat, kernel_format

METADATA_FILES = ("banger-kernel.json", "manifest.json")
MAX_METADATA_BYTES = 64 << 10
ARCH = "x86_64"
_ARCH_ALIASES = {"x86_64": ARCH, "amd64": ARCH, "x86-64": ARCH}
_KERNEL_GLOBS = ("vmlinux", "vmlinux-*", "vmlinuz", "vmlinuz-*", "bzImage")
_INITRD_GLOBS = ("initrd*", "initramfs*")
_MODULE_GLOBS = ("lib/modules/*", "usr/lib/modules/*")
_PREFIXES = ("", "boot/")
#: Keys of a metadata file that name a file or directory inside the import directory.
_PATH_KEYS = ("vmlinux", "vmlinuz", "initrd", "modules")
_TEXT_KEYS = ("name", "distro", "arch", "version")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}", re.ASCII)


@dataclass(frozen=True)
class Discovered:
    """What ``discover`` found; every path is resolved and lies inside ``root``."""

    root: Path
    vmlinux: Path | None  # an ELF x86-64 kernel
    vmlinuz: Path | None  # a bzImage
    initrd: Path | None
    modules: Path | None  # the tree of lib/modules/<version>
    version: str | None
    arch: str = ARCH
    name: str | None = None
    distro: str | None = None
    metadata: Path | None = None
    skipped: tuple[str, ...] = field(default=())

    @property
    def kernel(self) -> Path:
        """The kernel to boot: the ELF when there is one (Firecracker needs it)."""
        found = self.vmlinux or self.vmlinuz
        assert found is not None  # discover() guarantees one of them
        return found


@dataclass
class _Search:
    root: Path
    skipped: list[str] = field(default_factory=list)

    def inside(self, path: Path) -> Path | None:
        """``path`` resolved, or None (and noted) when it leads outside the root."""
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # 3.11 raises RuntimeError on a symlink loop
            self.skipped.append(f"{self.rel(path)}: {exc}")
            return None
        if resolved == self.root or resolved.is_relative_to(self.root):
            return resolved
        self.skipped.append(f"{self.rel(path)} -> {resolved} (outside {self.root})")
        return None

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def glob(self, patterns: tuple[str, ...], prefixes: tuple[str, ...]) -> list[Path]:
        found: dict[Path, None] = {}
        for prefix in prefixes:
            for pattern in patterns:
                for path in sorted(self.root.glob(prefix + pattern)):
                    resolved = self.inside(path)
                    if resolved is not None and resolved.exists():
                        found.setdefault(resolved, None)
        return list(found)


def discover(directory: Path) -> Discovered:
    """Find the kernel, initrd and modules in ``directory`` (see the module docstring)."""
    root = _root(directory)
    search = _Search(root)
    meta_path, meta = _metadata(search)
    kernels = _explicit(search, meta, ("vmlinux", "vmlinuz")) or search.glob(
        _KERNEL_GLOBS, _PREFIXES
    )
    vmlinux, vmlinuz = _split_kernels(search, kernels)
    if vmlinux is None and vmlinuz is None:
        raise _nothing_found(search)
    initrd = _one(search, "initrd", _explicit(search, meta, ("initrd",)) or _initrds(search))
    modules = _one(search, "modules", _explicit(search, meta, ("modules",)) or _modules(search))
    if modules is not None and not modules.is_dir():
        raise InvalidArgument(f"modules {search.rel(modules)} is not a directory")
    version = _check_version(meta.get("version") or _version(search, vmlinux or vmlinuz, modules))
    return Discovered(
        root=root,
        vmlinux=vmlinux,
        vmlinuz=vmlinuz,
        initrd=initrd,
        modules=modules,
        version=version,
        arch=_arch(meta.get("arch")),
        name=meta.get("name"),
        distro=meta.get("distro"),
        metadata=meta_path,
        skipped=tuple(search.skipped),
    )


def _root(directory: Path) -> Path:
    try:
        st = directory.stat()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {directory}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{directory} is not a directory")
    return directory.resolve()


# -- metadata ---------------------------------------------------------------------------


def _metadata(search: _Search) -> tuple[Path | None, dict[str, str]]:
    for name in METADATA_FILES:
        path = search.root / name
        if not os.path.lexists(path):
            continue
        resolved = search.inside(path)
        if resolved is None:
            continue
        return resolved, _parse_metadata(resolved, name)
    return None, {}


def _parse_metadata(path: Path, label: str) -> dict[str, str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InvalidArgument(f"{label} is not a regular file")
            raw = f.read(MAX_METADATA_BYTES + 1)
    except OSError as exc:
        raise InvalidArgument(f"cannot read {label}: {exc.strerror}") from exc
    if len(raw) > MAX_METADATA_BYTES:
        raise InvalidArgument(f"{label} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        data: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{label} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument(f"{label} must hold a JSON object")
    out: dict[str, str] = {}
    for key in (*_TEXT_KEYS, *_PATH_KEYS):
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value or len(value) > 255:
            raise InvalidArgument(f"{label}: {key!r} must be a non-empty string")
        out[key] = value
    return out


def _explicit(search: _Search, meta: dict[str, str], keys: tuple[str, ...]) -> list[Path]:
    """Paths a metadata file names for ``keys``; they must exist inside the directory."""
    found: list[Path] = []
    for key in keys:
        rel = meta.get(key)
        if rel is None:
            continue
        if Path(rel).is_absolute():
            raise InvalidArgument(f"metadata {key!r} must be relative to the directory: {rel}")
        path = search.inside(search.root / rel)
        if path is None:
            raise InvalidArgument(f"metadata {key!r} ({rel}) leads outside {search.root}")
        if not path.exists():
            raise InvalidArgument(f"metadata {key!r} names {rel}, which does not exist")
        found.append(path)
    return found


def _arch(value: str | None) -> str:
    if value is None:
        return ARCH
    arch = _ARCH_ALIASES.get(value.lower())
    if arch is None:
        raise InvalidArgument(f"kernel arch {value!r} is not supported; banger runs x86_64 only")
    return arch


# -- candidates -------------------------------------------------------------------------


def _split_kernels(search: _Search, kernels: list[Path]) -> tuple[Path | None, Path | None]:
    elves: list[Path] = []
    bzimages: list[Path] = []
    for path in kernels:
        fmt = kernel_format(path)
        if fmt is KernelFormat.UNKNOWN:
            raise InvalidArgument(
                f"{search.rel(path)} is neither a bzImage nor an x86-64 ELF vmlinux"
            )
        (elves if fmt is KernelFormat.ELF else bzimages).append(path)
    return _one(search, "ELF vmlinux", elves), _one(search, "bzImage kernel", bzimages)


def _initrds(search: _Search) -> list[Path]:
    return [p for p in search.glob(_INITRD_GLOBS, _PREFIXES) if p.is_file()]


def _modules(search: _Search) -> list[Path]:
    found = [p for p in search.glob(_MODULE_GLOBS, ("",)) if p.is_dir()]
    store = search.root / "modules"
    if not found and store.is_dir():
        resolved = search.inside(store)
        found = [resolved] if resolved is not None else []
    return found


def _one(search: _Search, kind: str, found: list[Path]) -> Path | None:
    if len(found) > 1:
        listed = "\n".join(search.rel(p) for p in found)
        raise InvalidArgument(
            f"found {len(found)} candidates for the {kind} in {search.root}",
            details=listed,
            hint="keep one of them, or name the files in banger-kernel.json (docs/kernels.md)",
        )
    return found[0] if found else None


def _nothing_found(search: _Search) -> InvalidArgument:
    details = None
    if search.skipped:
        details = "skipped symlinks:\n" + "\n".join(search.skipped)
    return InvalidArgument(
        f"no kernel found in {search.root}",
        details=details,
        hint="expected boot/vmlinuz-<version>, vmlinuz-*, vmlinux or boot/vmlinux-* "
        "(docs/kernels.md)",
    )


def _check_version(version: str | None) -> str | None:
    # The version names a directory (lib/modules/<version>) when modules are prepared.
    if version is not None and not _VERSION.fullmatch(version):
        raise InvalidArgument(
            f"kernel version {version[:80]!r} is not usable",
            hint="a version is letters, digits and . _ + ~ - (like 6.1.0-56-cloud-amd64)",
        )
    return version


def _suffix_version(path: Path) -> str | None:
    for stem in ("vmlinux-", "vmlinuz-"):
        if path.name.startswith(stem) and len(path.name) > len(stem):
            return path.name[len(stem) :]
    return None


def _version(search: _Search, kernel: Path | None, modules: Path | None) -> str | None:
    from_file = _suffix_version(kernel) if kernel is not None else None
    from_modules = None
    if modules is not None and modules.parent.name == "modules" and modules.name != "modules":
        from_modules = modules.name
    if from_file and from_modules and from_file != from_modules:
        raise InvalidArgument(
            f"kernel {search.rel(kernel or search.root)} is version {from_file} "
            f"but the modules are for {from_modules}",
            hint="modules only load into the kernel they were built for",
        )
    return from_file or from_modules
