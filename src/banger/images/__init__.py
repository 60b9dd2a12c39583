"""Images (SPEC §5): rootfs, work seed, kernel, initrd and modules, registered or managed."""
