"""A Firecracker stand-in for tests: Firecracker's CLI and REST API, guests run by QEMU/TCG.

Firecracker cannot run on the test machines (no binary, no usable KVM), so the
``firecracker`` executable in this directory plays it: it validates every API request the
way Firecracker v1.16 does and fails the way it fails, and on ``InstanceStart`` boots the
configured kernel, drives and TAP under QEMU. What it checks and what it cannot verify:
docs/explanation/firecracker-standin.md.

Modules: ``main`` (command line, process life), ``httpd`` (Firecracker's HTTP layer),
``schema`` (serde-style body checks), ``routes`` (URL + body -> action), ``machine``
(the pre-boot/running state machine), ``devices`` (host checks: files, TAP, vsock, ELF),
``guest`` (the QEMU process), ``fclog`` (Firecracker's log format).
Stdlib only: it runs under the system python3 with a minimal environment.
"""

#: The Firecracker release whose API and messages the stand-in reproduces.
FIRECRACKER_VERSION = "1.16.1"
