"""Local builds from the host's own distribution archive (the ``local-debian`` source).

Owns: reading the host's apt sources (``/etc/apt/sources.list`` and
``sources.list.d/*.list`` one-line files, ``*.sources`` deb822 files) and choosing the
entries of a Debian suite from them, so that no mirror host name is ever written in
banger; building a Debian root filesystem as a **tar** with ``mmdebstrap`` (or, as root,
``debootstrap`` plus ``tar``); and fetching a kernel package with apt into a private apt
state (its own lists under banger's cache, the host's apt configuration otherwise), then
unpacking it with ``dpkg-deb -x`` into a directory the kernel import reads. As a normal
user, mmdebstrap runs in its unshare mode, whose needs (``newuidmap``/``newgidmap``, a
range of 65536 ids for the user in ``/etc/subuid`` and ``/etc/subgid``, user namespaces
the kernel lets an ordinary user create) are checked first (``unshare_lacks``), so the
build says what the host lacks instead of failing minutes in.
Must not: install anything on the host (no ``apt-get install``, nothing in ``/boot``),
run ``apt-get update`` on the host's own lists, or touch the state database. Blocking:
call from a worker thread.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from banger.errors import CommandFailed, InvalidArgument, UnsupportedHost
from banger.host.publish import remove_tree
from banger.host.runner import Runner, find_tool

APT_ETC = Path("/etc/apt")
OS_RELEASE = Path("/etc/os-release")
ETC = Path("/etc")
#: What mmdebstrap's unshare mode maps: the user's own id plus this many subordinate ids.
SUBID_RANGE = 65536
BUILD_TIMEOUT_S = 1800.0
APT_TIMEOUT_S = 600.0
#: Reset what mmdebstrap copies from the host, and drop host keys every VM would share
#: (each VM gets its own, injected at create).
_CUSTOMIZE = (
    'rm -f "$1"/etc/ssh/ssh_host_*_key "$1"/etc/ssh/ssh_host_*_key.pub',
    'echo debian > "$1/etc/hostname"',
    ': > "$1/etc/resolv.conf"',
    'chmod 0644 "$1/etc/hostname" "$1/etc/resolv.conf"',
)
#: Touched by mmdebstrap's essential hook in the build's work dir: the Essential set is
#: installed and the requested packages come next (the ``packages`` progress stage).
ESSENTIAL_DONE = "essential-done"
_DEPENDS = re.compile(r"^\s*Depends: (linux-image-[a-z0-9.+-]+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class AptSource:
    """One (type, URI, suite) of the host's apt sources, with its components and options."""

    type: str
    uri: str
    suite: str
    components: tuple[str, ...]
    signed_by: str | None = None
    origin: str = ""

    def line(self, suite: str | None = None) -> str:
        """The one-line form, optionally for another suite of the same archive."""
        opts = f"[signed-by={self.signed_by}] " if self.signed_by else ""
        return f"{self.type} {opts}{self.uri} {suite or self.suite} {' '.join(self.components)}"


# -- reading the host's apt sources ----------------------------------------------------------


def parse_one_line(text: str, origin: str = "") -> list[AptSource]:
    """``deb [opt=val ...] URI SUITE COMPONENT...`` lines; comments and blanks skipped."""
    found = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        options: dict[str, str] = {}
        if match := re.match(r"^(deb|deb-src)\s+\[([^\]]*)\]\s+(.*)$", line):
            kind, opts, rest = match.groups()
            options = dict(o.split("=", 1) for o in opts.split() if "=" in o)
        elif match := re.match(r"^(deb|deb-src)\s+(.*)$", line):
            kind, rest = match.groups()
        else:
            continue
        words = rest.split()
        if len(words) < 2:
            continue
        signed = options.get("signed-by")
        found.append(AptSource(kind, words[0], words[1], tuple(words[2:]), signed, origin))
    return found


def parse_deb822(text: str, origin: str = "") -> list[AptSource]:
    """deb822 ``.sources`` stanzas (``Types``/``URIs``/``Suites``/``Components``), one
    entry per type, URI and suite; ``Enabled: no`` stanzas skipped."""
    found: list[AptSource] = []
    for stanza in _stanzas(text):
        if stanza.get("enabled", "yes").strip().lower() == "no":
            continue
        signed = stanza.get("signed-by", "").strip()
        # An inline key block cannot be written in the one-line form: apt's default
        # keyrings then decide, which on Debian hold the archive keys.
        key = signed if signed and "\n" not in signed and "BEGIN PGP" not in signed else None
        comps = tuple(stanza.get("components", "").split())
        for kind in stanza.get("types", "").split():
            for uri in stanza.get("uris", "").split():
                found.extend(
                    AptSource(kind, uri, suite, comps, key, origin)
                    for suite in stanza.get("suites", "").split()
                )
    return found


def _stanzas(text: str) -> list[dict[str, str]]:
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last = {}, ""
        elif line[0] in " \t" and last:
            current[last] += "\n" + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            last = key.strip().lower()
            current[last] = value.strip()
    return stanzas


def host_sources(etc: Path = APT_ETC) -> list[AptSource]:
    """Every entry of the host's apt configuration, in apt's reading order."""
    found: list[AptSource] = []
    main = etc / "sources.list"
    if main.is_file():
        found += parse_one_line(main.read_text(errors="replace"), str(main))
    parts = etc / "sources.list.d"
    for path in sorted(parts.iterdir()) if parts.is_dir() else []:
        if path.suffix == ".list" and path.is_file():
            found += parse_one_line(path.read_text(errors="replace"), str(path))
        elif path.suffix == ".sources" and path.is_file():
            found += parse_deb822(path.read_text(errors="replace"), str(path))
    return found


def host_release(os_release: Path = OS_RELEASE) -> tuple[str, str]:
    """(ID, VERSION_CODENAME) of the host, empty strings when unknown."""
    values: dict[str, str] = {}
    if os_release.is_file():
        for line in os_release.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("\"'")
    return values.get("ID", ""), values.get("VERSION_CODENAME", "")


def suite_sources(
    sources: Iterable[AptSource], suite: str, *, host: tuple[str, str] = ("", "")
) -> list[str]:
    """One-line sources for ``suite`` (and its ``-updates``/``-security`` pockets).

    The host's entries for that suite are used as they are. A Debian host of another
    release lends its mirrors with the suite replaced; anything else is an error.
    """
    binary = [s for s in sources if s.type == "deb" and "main" in s.components]
    lines = [s.line() for s in binary if _pocket_of(s.suite, suite) is not None]
    host_id, codename = host
    if not lines and host_id == "debian" and codename:
        lines = [
            s.line(suite + pocket)
            for s in binary
            if (pocket := _pocket_of(s.suite, codename)) is not None
        ]
    if not lines:
        raise UnsupportedHost(
            f"the host's apt sources have no Debian archive for {suite!r}",
            details="read /etc/apt/sources.list and /etc/apt/sources.list.d/*.{list,sources}",
            hint=f"add a {suite} entry to the host's apt sources, or use an image source "
            "that needs no local build (docs/catalog.md)",
        )
    return list(dict.fromkeys(lines))


def _pocket_of(suite: str, base: str) -> str | None:
    """``""``, ``"-updates"`` or ``"-security"`` when ``suite`` is a pocket of ``base``."""
    for pocket in ("", "-updates", "-security"):
        if suite == base + pocket:
            return pocket
    return None


# -- the root filesystem ----------------------------------------------------------------------


@dataclass(frozen=True)
class DebianRecipe:
    suite: str
    variant: str = "minbase"
    include: tuple[str, ...] = ()
    arch: str = "amd64"


def build_rootfs_tar(
    recipe: DebianRecipe, sources: list[str], out: Path, runner: Runner, work_dir: Path
) -> str:
    """Bootstrap ``recipe`` into the tar ``out``; returns which tool did it."""
    source_file = work_dir / "sources.list"
    source_file.write_text("\n".join(sources) + "\n")
    if find_tool("mmdebstrap"):
        mode = None if os.geteuid() == 0 else require_unshare_mode(runner)
        _mmdebstrap(recipe, source_file, out, runner, marker=work_dir / ESSENTIAL_DONE, mode=mode)
        return "mmdebstrap"
    if find_tool("debootstrap") and os.geteuid() == 0:
        _debootstrap(recipe, sources, out, runner, work_dir)
        return "debootstrap"
    raise UnsupportedHost(
        "building the Debian image locally needs mmdebstrap (or debootstrap as root)",
        hint="install it: apt-get install mmdebstrap",
    )


def check_user_build(runner: Runner) -> None:
    """Before any download: a normal user's build would fail for want of what this names."""
    if os.geteuid() != 0 and find_tool("mmdebstrap"):
        require_unshare_mode(runner)


def require_unshare_mode(runner: Runner) -> str:
    """``"unshare"`` if this user can build with it; else ``UnsupportedHost`` naming what
    is missing and how to add it."""
    user = pwd.getpwuid(os.geteuid())
    lacks = unshare_lacks(user.pw_name, user.pw_uid, runner=runner)
    if not lacks:
        return "unshare"
    raise UnsupportedHost(
        "building the Debian image as a normal user needs mmdebstrap's unshare mode, "
        "and this host lacks " + "; ".join(lacks),
        hint=(
            "as root: `apt-get install uidmap` (newuidmap, newgidmap) and `usermod "
            f"--add-subuids 100000-165535 --add-subgids 100000-165535 {user.pw_name}` "
            "(a range no other user has); or run the daemon as root once to build it. "
            "A daemon of `banger system install` (NoNewPrivileges, RestrictNamespaces) "
            "cannot use this mode: pull an image there instead"
        ),
    )


def unshare_lacks(
    user: str,
    uid: int,
    *,
    runner: Runner,
    etc: Path = ETC,
    which: Callable[[str], str | None] = find_tool,
) -> list[str]:
    """What mmdebstrap's unshare mode needs and this host does not give ``user``."""
    lacks = [f"{tool} (package uidmap)" for tool in ("newuidmap", "newgidmap") if not which(tool)]
    for name in ("subuid", "subgid"):
        if not _has_subid_range(etc / name, user, uid):
            lacks.append(f"a range of {SUBID_RANGE} ids for {user} in {etc / name}")
    try:
        runner.run(["unshare", "--user", "--map-root-user", "true"], timeout_s=30)
    except CommandFailed as exc:
        said = (exc.details or exc.brief).strip().splitlines()
        lacks.append(
            "user namespaces for ordinary users (unshare --user: "
            f"{said[-1] if said else 'refused'}; see kernel.unprivileged_userns_clone, "
            "user.max_user_namespaces, kernel.apparmor_restrict_unprivileged_userns)"
        )
    return lacks


def _has_subid_range(path: Path, user: str, uid: int) -> bool:
    """``user:start:count`` (or ``uid:start:count``) with count >= SUBID_RANGE."""
    try:
        text = path.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        if fields[1].isdigit() and fields[2].isdigit() and int(fields[2]) >= SUBID_RANGE:
            return True
    return False


def _mmdebstrap(
    recipe: DebianRecipe,
    source_file: Path,
    out: Path,
    runner: Runner,
    *,
    marker: Path,
    mode: str | None = None,
) -> None:
    argv: list[str | Path] = [
        "mmdebstrap", "--quiet", f"--variant={recipe.variant}", f"--architectures={recipe.arch}",
        "--format=tar", "--aptopt=Acquire::Languages \"none\";",
    ]  # fmt: skip
    if mode is not None:
        argv.append(f"--mode={mode}")
    if recipe.include:
        argv.append(f"--include={','.join(recipe.include)}")
    # Only a progress marker: its failure must not fail the build.
    argv.append(f"--essential-hook=touch {shlex.quote(str(marker))} || true")
    argv += [f"--customize-hook={hook}" for hook in _CUSTOMIZE]
    argv += [recipe.suite, out, source_file]
    try:
        runner.run(argv, timeout_s=BUILD_TIMEOUT_S, env={"DEBIAN_FRONTEND": "noninteractive"})
    except CommandFailed as exc:
        if os.geteuid() != 0:
            exc.hint = (
                "mmdebstrap's unshare mode failed although its needs were checked; its "
                "output is in `banger daemon logs`"
            )
        raise


def _debootstrap(
    recipe: DebianRecipe, sources: list[str], out: Path, runner: Runner, work_dir: Path
) -> None:
    mirror = sources[0].split()[-3]  # the URI of the first entry: debootstrap takes one
    tree = work_dir / "tree"
    argv: list[str | Path] = [
        "debootstrap", f"--variant={recipe.variant}", f"--arch={recipe.arch}",
    ]  # fmt: skip
    if recipe.include:
        argv.append(f"--include={','.join(recipe.include)}")
    try:
        runner.run(
            [*argv, recipe.suite, tree, mirror],
            timeout_s=BUILD_TIMEOUT_S,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
        (tree / "etc" / "apt" / "sources.list").write_text("\n".join(sources) + "\n")
        for key in (tree / "etc" / "ssh").glob("ssh_host_*"):
            key.unlink()
        for name, text in (("hostname", "debian\n"), ("resolv.conf", "")):
            (tree / "etc" / name).write_text(text)
            (tree / "etc" / name).chmod(0o644)
        tar: list[str | Path] = ["tar", "--numeric-owner", "--xattrs", "--acls", "-C", tree]
        runner.run([*tar, "-cf", out, "."], timeout_s=BUILD_TIMEOUT_S)
    finally:
        _remove_unmounted(tree)


def _remove_unmounted(tree: Path) -> None:
    """Remove a bootstrap tree, unless something is still mounted below it."""
    prefix = str(tree.resolve()) + "/"
    with Path("/proc/self/mounts").open() as mounts:
        if any(line.split()[1].startswith(prefix) for line in mounts):
            raise CommandFailed(f"{tree} still has mounts below it; not removed")
    remove_tree(tree)


# -- the kernel package -----------------------------------------------------------------------


@dataclass(frozen=True)
class PrivateApt:
    """apt with its own lists and cache in ``root`` and the given sources; the host's
    apt.conf.d (proxies) still applies."""

    root: Path
    sources: list[str]
    arch: str = "amd64"
    extra: list[str] = field(default_factory=list)

    def options(self) -> list[str]:
        user = pwd.getpwuid(os.geteuid()).pw_name
        pairs = {
            "Dir::Etc::SourceList": str(self.root / "sources.list"),
            "Dir::Etc::SourceParts": str(self.root / "sources.list.d"),
            "Dir::State": str(self.root / "state"),
            "Dir::State::status": str(self.root / "status"),
            "Dir::Cache": str(self.root / "cache"),
            "Debug::NoLocking": "true",
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "Acquire::Languages": "none",
            # Running as the caller avoids apt's _apt sandbox user, who cannot enter
            # banger's private (0700) directories.
            "APT::Sandbox::User": user,
        }
        return [arg for key, value in pairs.items() for arg in ("-o", f"{key}={value}")]

    def prepare(self) -> None:
        for sub in ("sources.list.d", "state/lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "sources.list").write_text("\n".join(self.sources) + "\n")
        (self.root / "status").touch()

    def run(self, runner: Runner, tool: str, *args: str | Path, cwd: Path | None = None) -> str:
        argv = [tool, *self.options(), *args]
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        return runner.run(argv, timeout_s=APT_TIMEOUT_S, env=env, cwd=cwd).text


@dataclass(frozen=True)
class KernelPackage:
    tree: Path  # boot/vmlinuz-<v>, (usr/)lib/modules/<v>: what the kernel import reads
    package: str  # the versioned package, like linux-image-6.1.0-56-cloud-amd64
    deb: str  # its file name, version included


def fetch_kernel_package(
    apt: PrivateApt, package: str, work_dir: Path, runner: Runner
) -> KernelPackage:
    """Download ``package``'s kernel (the versioned package a metapackage depends on)
    and unpack it into ``work_dir/tree``; never installed."""
    apt.prepare()
    apt.run(runner, "apt-get", "-q", "update")
    versioned = _versioned(apt.run(runner, "apt-cache", "depends", package), package)
    debs = work_dir / "debs"
    debs.mkdir()
    apt.run(runner, "apt-get", "-q", "download", versioned, cwd=debs)
    found = sorted(debs.glob(f"{versioned}_*.deb"))
    if len(found) != 1:
        raise CommandFailed(f"apt-get download {versioned} left {len(found)} packages")
    tree = work_dir / "tree"
    runner.run(["dpkg-deb", "-x", found[0], tree], timeout_s=APT_TIMEOUT_S)
    deb = found[0].name
    found[0].unlink()
    return KernelPackage(tree=tree, package=versioned, deb=deb)


def _versioned(depends: str, package: str) -> str:
    if re.match(r"linux-image-\d", package):
        return package  # already a versioned package
    match = _DEPENDS.search(depends)
    if match is None:
        raise InvalidArgument(
            f"cannot tell which kernel package {package} depends on",
            details=depends[-500:] or None,
        )
    return match.group(1)


def host_suite_sources(suite: str) -> list[str]:
    """The host's apt sources, pointed at ``suite`` (for a kernel package or a build)."""
    return suite_sources(host_sources(), suite, host=host_release())
