#!/usr/bin/env bash
# Sets up banger on a Debian/Ubuntu machine: system packages (apt), a virtualenv with
# banger and its locked dependencies (uv), and `banger`/`bangerd` links in ~/.local/bin.
# Safe to run again: it installs only what is missing and rebuilds banger's build stamp.
#
#   scripts/setup.sh          # what a user needs
#   scripts/setup.sh --dev    # plus test, lint and type-check tools (and --mcp)
#   scripts/setup.sh --mcp    # plus the MCP library `banger mcp` needs (docs/mcp.md)
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
mcp=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1; mcp=1;;
        --mcp) mcp=1;;
        *) echo "setup: unknown option $arg (known: --dev, --mcp)" >&2; exit 2;;
    esac
done

# Host tools banger drives (docs/explanation/host-packages.md says why each one).
packages=(python3 python3-venv git e2fsprogs fakeroot iproute2 nftables openssh-client zstd
          lz4 busybox-static qemu-system-x86 mmdebstrap debootstrap kmod uidmap)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The VM tests need a few more (debootstrap, dropbear for the tiny test guest, …).
[ "$dev" = 1 ] && scripts/test-deps.sh

# Debian's own python3 (>= 3.11) runs banger; the venv keeps its packages apart.
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $(/usr/bin/python3 --version)"
    /usr/bin/python3 -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
    .venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip >/dev/null
    .venv/bin/python -m pip install -q --disable-pip-version-check uv
fi
sync_args=(--frozen --reinstall-package banger)
[ "$dev" = 1 ] || sync_args+=(--no-dev)
# `banger mcp` needs the optional `mcp` extra; the dev setup (and so CI) tests it.
[ "$mcp" = 1 ] && sync_args+=(--extra mcp)
UV_PROJECT_ENVIRONMENT=.venv .venv/bin/uv sync -q "${sync_args[@]}"
# Python 3.11's venv seeds setuptools, which nothing here needs and uv leaves in place: its
# distutils-precedence.pth runs at every interpreter start, ~0.3 ms of each CLI call.
if compgen -G ".venv/lib/python3*/site-packages/distutils-precedence.pth" >/dev/null; then
    .venv/bin/uv pip uninstall -q --python .venv/bin/python setuptools
fi

mkdir -p "$HOME/.local/bin"
for tool in banger bangerd; do
    ln -sfn "$PWD/.venv/bin/$tool" "$HOME/.local/bin/$tool"
done
case ":$PATH:" in
    *":$HOME/.local/bin:"*) ;;
    *) echo "setup: add ~/.local/bin to PATH to run banger from anywhere (or use .venv/bin/banger)";;
esac
echo "setup: ready — $(.venv/bin/banger version | head -n 1)"
