"""Per-VM disks and guest identity (SPEC §3 Disks, §5 sshd drop-in and per-VM identity).

Owns: cloning image files cheaply (``clone``), making and growing the ``/root`` work disk
(``workdisk``), editing ext4 image files without mounting them (``ext4edit``) and the
per-VM identity written into them (``identity``).
Must not: mount anything, need root, touch the state database, or decide where a VM's
files live (services pass the paths in). Submodules are imported by their users; this
package imports nothing so that importing it costs nothing.
"""
