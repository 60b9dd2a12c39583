"""The guest kernel command line (docs/dev/vm-plan.md: the guest boot contract).

Owns: turning a VM's network and boot facts into the exact ``-append``/``boot_args``
string. Must not: read host files; the caller passes the TSC frequency when it matters.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BootArgs:
    hostname: str
    ip: str | None = None
    gateway: str | None = None
    netmask: str | None = None
    dns: tuple[str, ...] = ()
    #: Under TCG the guest must not calibrate its TSC (microvm has no HPET to do it with).
    tsc_khz: int | None = None
    #: ``norandmaps``: no address-space randomization in the guest. Under TCG a process
    #: whose libraries land at new addresses has all their code translated again
    #: (docs/explanation/emulated-guests.md).
    norandmaps: bool = False
    initrd_net: bool = True
    init: str | None = None
    extra: tuple[str, ...] = ()


def kernel_cmdline(args: BootArgs) -> str:
    parts = ["console=ttyS0", "reboot=k", "panic=-1", "root=/dev/vda", "rw", "net.ifnames=0"]
    if args.ip and args.netmask:
        parts.append(f"ip={args.ip}::{args.gateway or ''}:{args.netmask}:{args.hostname}:eth0:off")
        parts.extend(f"nameserver={server}" for server in args.dns)
        if args.initrd_net:
            parts.append("initrd_net=1")
    if args.tsc_khz:
        # reliable: the emulated TSC follows the host's clock on every vCPU; without it
        # the guest falls back to a 4 ms jiffies clock.
        parts.extend((f"tsc_early_khz={args.tsc_khz}", "tsc=reliable"))
    if args.norandmaps:
        parts.append("norandmaps")
    if args.init:
        parts.append(f"init={args.init}")
    parts.extend(args.extra)
    return " ".join(parts)
