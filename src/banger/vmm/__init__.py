"""Hypervisor backends behind one protocol: Firecracker and QEMU."""
