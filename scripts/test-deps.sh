#!/usr/bin/env bash
# Installs the Debian packages the VM (e2e) tests need, and only the missing ones.
# Idempotent: a second run installs nothing and touches no package list.
#
# It never installs a kernel on the host: the guest kernel is fetched by tests/guests.py
# with `apt-get download linux-image-cloud-amd64` and unpacked with `dpkg-deb -x` into the
# test cache ($BANGER_TEST_CACHE, default /var/tmp/banger-test-cache), never into /boot.
set -euo pipefail

packages=(
    qemu-system-x86   # qemu-system-x86_64 (TCG) boots the test guests
    busybox-static    # the guests' initrd and tiny rootfs
    dropbear-bin      # SSH server of the tiny rootfs (dropbear, dropbearconvert)
    debootstrap       # the Debian test rootfs
    mmdebstrap        # the default image built from the host's Debian archive
    e2fsprogs         # mkfs.ext4 -d, debugfs
    fakeroot
    cpio              # initrd archives
    gzip
    kmod              # depmod for the unpacked guest kernel modules
    iproute2          # ip netns / bridge / tuntap
    openssh-client    # ssh, ssh-keygen
    lz4
    zstd
    dpkg-dev          # dpkg-deb (apt-get download + dpkg-deb -x)
    ca-certificates
    xfsprogs          # a reflink-capable filesystem for the disk-clone test (loop mount)
    lzop              # lzo-compressed kernel payloads in the vmlinux extraction tests
    docker-registry   # the local OCI registry of the pull tests (127.0.0.1 only, own config)
    skopeo            # pushes OCI layout fixtures into that registry
    umoci             # inspecting OCI layouts by hand (the tests write theirs in Python)
    openssl           # signs the test token server's JWTs for the registry's token auth
    bind9-dnsutils    # dig, the DNS tests' second client
    systemd-container # systemd-nspawn: the installed units under a real systemd (test_systemd_units)
)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

echo "test-deps: installing system packages: ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# Debian's docker-registry package enables a service listening on :5000 on all
# interfaces; the tests run their own registry on 127.0.0.1 and need none of that.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${sudo_cmd[@]}" systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
fi
