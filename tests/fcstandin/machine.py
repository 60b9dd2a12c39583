"""The microVM's state machine: pre-boot configuration, InstanceStart, the running guest.

Owns: what ``PrebootApiController`` and ``RuntimeApiController`` (src/vmm/src/
rpc_interface.rs) accept in each state and their messages; the resources Firecracker
checks when they are configured (kernel/initrd files and the command line at
``/boot-source``, backing files at ``/drives``, TAPs at ``/network-interfaces``, the
``uds_path`` at ``/vsock``, the log file at ``/logger``) and at ``InstanceStart``
(a kernel configured, an ELF header). Must not: parse HTTP or JSON (``routes`` did).
Runs on the main thread only: one request at a time, as Firecracker's VMM thread.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from tests.fcstandin import FIRECRACKER_VERSION, devices
from tests.fcstandin.fclog import FcLog
from tests.fcstandin.guest import DriveSpec, Guest, GuestError, GuestSpec, NetSpec, host_tsc_khz
from tests.fcstandin.httpd import Response, fault, json_response
from tests.fcstandin.routes import Action

NOT_STARTED = "Not started"
RUNNING = "Running"
PRE_BOOT_ONLY = "The requested operation is not supported before starting the microVM."
POST_BOOT_ONLY = "The requested operation is not supported after starting the microVM."
#: Firecracker's default when boot_args is absent (vmm_config/boot_source.rs).
DEFAULT_KERNEL_CMDLINE = (
    "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd "
    "swiotlb=noforce"
)
CMDLINE_MAX_SIZE = 2048  # x86_64 layout.rs
MAX_VCPUS = 32
#: The guest port the stand-in's vsock reaches: banger's agent (bridged to virtio-serial).
AGENT_VSOCK_PORT = 52
#: ... and its exec channel (docs/explanation/guest-exec.md), bridged to a second port.
EXEC_VSOCK_PORT = 53


class Fault(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Drive:
    config: dict[str, Any]

    @property
    def drive_id(self) -> str:
        return str(self.config["drive_id"])

    @property
    def is_root(self) -> bool:
        return bool(self.config["is_root_device"])


@dataclass
class Net:
    config: dict[str, Any]
    tap_fd: int


@dataclass
class Resources:
    machine: dict[str, Any] = field(
        default_factory=lambda: {
            "vcpu_count": 1,
            "mem_size_mib": 128,
            "smt": False,
            "track_dirty_pages": False,
            "huge_pages": "None",
        }
    )
    boot: dict[str, Any] | None = None
    drives: list[Drive] = field(default_factory=list)  # the root device first
    nets: list[Net] = field(default_factory=list)
    vsock: devices.VsockMuxer | None = None


class Machine:
    def __init__(self, instance_id: str, log: FcLog) -> None:
        self.instance_id = instance_id
        self.log = log
        self.res = Resources()
        self.guest: Guest | None = None

    @property
    def state(self) -> str:
        return RUNNING if self.guest is not None else NOT_STARTED

    def handle(self, action: Action) -> Response:
        try:
            return self._dispatch(action)
        except Fault as exc:
            self.log.error(f"Received Error. Status code: 400 Bad Request. Message: {exc.message}")
            return fault(400, exc.message)

    def _dispatch(self, action: Action) -> Response:
        cfg = action.config
        if action.name == "describe_instance":
            return json_response(
                {
                    "id": self.instance_id,
                    "state": self.state,
                    "vmm_version": FIRECRACKER_VERSION,
                    "app_name": "Firecracker",
                }
            )
        if action.name == "version":
            return json_response({"firecracker_version": FIRECRACKER_VERSION})
        if action.name == "get_machine_config":
            return json_response(self.res.machine)
        if action.name == "put_actions":
            return self._action(cfg["action_type"])
        if self.guest is not None:
            return self._post_boot_config(action)
        handlers = {
            "put_boot-source": self._boot_source,
            "put_machine-config": self._machine_config,
            "put_drive": self._drive,
            "put_net": self._net,
            "put_logger": self._logger,
            "put_vsock": self._vsock,
        }
        if action.name in handlers:
            handlers[action.name](cfg)
            return Response(204)
        # PATCH of a device and hot-unplug are post-boot operations.
        raise Fault(PRE_BOOT_ONLY)

    def _post_boot_config(self, action: Action) -> Response:
        name = action.name
        if name in ("put_drive", "put_net", "hot_unplug"):
            # v1.16 treats these as PCI hotplug, refused on the (default) MMIO transport.
            raise Fault("PCI is not enabled")
        if name == "patch_device" and "drive_id" in action.config:
            self._patch_drive(action.config)
            return Response(204)
        if name == "patch_device":
            raise Fault("The Firecracker stand-in does not emulate network interface updates.")
        raise Fault(POST_BOOT_ONLY)

    def _patch_drive(self, cfg: dict[str, Any]) -> None:
        """``Vmm::update_block_device_path``: reopen the backing file and give the guest
        its size now (Firecracker reads it with ``stat``, in 512-byte sectors, and raises
        the config-change interrupt). Rate limiters are accepted and ignored."""
        prefix = "Unable to patch the block device: "
        suffix = " Please verify the request arguments."
        index = next(
            (i for i, d in enumerate(self.res.drives) if d.drive_id == cfg["drive_id"]), None
        )
        if index is None:
            raise Fault(prefix + "Device manager error: Invalid device ID." + suffix)
        path = cfg["path_on_host"]
        if path is None:
            return
        drive = self.res.drives[index]
        if path != drive.config["path_on_host"]:
            raise Fault("The Firecracker stand-in does not emulate moving a drive to another file.")
        try:
            devices.check_backing_file(path, read_only=bool(drive.config["is_read_only"]))
            size = os.stat(path).st_size
        except (devices.DeviceError, OSError) as exc:
            raise Fault(prefix + str(exc) + suffix) from exc
        assert self.guest is not None
        try:
            # The guest's drives are QEMU's d0, d1, … in Firecracker's order (guest.py).
            self.guest.execute("block_resize", {"device": f"d{index}", "size": size // 512 * 512})
        except (GuestError, OSError) as exc:
            raise Fault(prefix + f"Internal VMM error: {exc}" + suffix) from exc

    # -- pre-boot configuration -----------------------------------------------------------

    def _boot_source(self, cfg: dict[str, Any]) -> None:
        prefix = "Boot source error: "
        try:
            os.close(os.open(cfg["kernel_image_path"], os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            raise Fault(
                prefix + f"The kernel file cannot be opened: {devices.io_text(exc)}"
            ) from exc
        if cfg["initrd_path"] is not None:
            try:
                os.close(os.open(cfg["initrd_path"], os.O_RDONLY | os.O_CLOEXEC))
            except OSError as exc:
                raise Fault(
                    prefix + "The initrd file cannot be opened due to invalid path or invalid "
                    f"permissions. {devices.io_text(exc)}"
                ) from exc
        args = cfg["boot_args"]
        if args is not None and len(args.strip()) + 1 > CMDLINE_MAX_SIZE:
            raise Fault(
                prefix + "The kernel command line is invalid: Invalid cmdline capacity provided."
            )
        self.res.boot = cfg

    def _machine_config(self, cfg: dict[str, Any]) -> None:
        vcpus, smt, mem = cfg["vcpu_count"], cfg["smt"], cfg["mem_size_mib"]
        if vcpus == 0 or vcpus > MAX_VCPUS or (smt and vcpus > 1 and vcpus % 2 == 1):
            raise Fault(
                "Machine config error: The number of vCPUs must be greater than 0, less than "
                f"{MAX_VCPUS} and must be 1 or an even number if SMT is enabled."
            )
        if mem == 0 or (cfg["huge_pages"] == "2M" and mem % 2):
            raise Fault(
                "Machine config error: The memory size (MiB) is either 0, or not a multiple of "
                "the configured page size."
            )
        self.res.machine = {k: v for k, v in cfg.items() if v is not None}

    def _drive(self, cfg: dict[str, Any]) -> None:
        prefix = "Drive config error: "
        drives = self.res.drives
        position = next((i for i, d in enumerate(drives) if d.drive_id == cfg["drive_id"]), None)
        has_root = bool(drives) and drives[0].is_root
        if cfg["is_root_device"] and has_root and position != 0:
            raise Fault(prefix + "A root block device already exists!")
        path, sock = cfg["path_on_host"], cfg["socket"]
        if (path is None) == (sock is None):
            raise Fault(prefix + "Unable to create the virtio block device: Invalid block config.")
        if sock is not None:
            raise Fault("The Firecracker stand-in does not emulate vhost-user block devices.")
        try:
            devices.check_backing_file(path, read_only=bool(cfg["is_read_only"]))
        except devices.DeviceError as exc:
            raise Fault(prefix + str(exc)) from exc
        drive = Drive(cfg)
        if position is None:
            drives.insert(0 if drive.is_root else len(drives), drive)
            return
        drives[position] = drive
        if position != 0 and drive.is_root:
            drives[0], drives[position] = drives[position], drives[0]

    def _net(self, cfg: dict[str, Any]) -> None:
        prefix = "Network config error: "
        mac = cfg["guest_mac"]
        nets = self.res.nets
        if mac is not None and any(
            n.config["guest_mac"] == mac and n.config["iface_id"] != cfg["iface_id"] for n in nets
        ):
            raise Fault(prefix + f"The MAC address is already in use: {mac}")
        if cfg["mtu"] is not None and cfg["mtu"] < 68:
            raise Fault(
                prefix + f"Could not create the network device: MTU {cfg['mtu']} is out of "
                "range [68, 65535]"
            )
        for old in [n for n in nets if n.config["iface_id"] == cfg["iface_id"]]:
            self.log.warn(
                f"Replacing existing network device '{cfg['iface_id']}'. The previous device "
                "configuration will be destroyed."
            )
            nets.remove(old)
            os.close(old.tap_fd)
        try:
            fd = devices.open_tap(cfg["host_dev_name"])
        except devices.DeviceError as exc:
            raise Fault(prefix + str(exc)) from exc
        nets.append(Net(cfg, fd))

    def _logger(self, cfg: dict[str, Any]) -> None:
        try:
            self.log.configure(
                log_path=cfg["log_path"], level=cfg["level"], show_level=cfg["show_level"]
            )
        except OSError as exc:
            raise Fault(
                f"Logger error: Failed to open target file: {devices.io_text(exc)}"
            ) from exc

    def _vsock(self, cfg: dict[str, Any]) -> None:
        if self.res.vsock is not None:  # Firecracker drops the old device and its socket
            self.res.vsock.close()
            self.res.vsock = None
        try:
            self.res.vsock = devices.VsockMuxer(cfg["uds_path"])
        except devices.DeviceError as exc:
            raise Fault(f"Vsock config error: {exc}") from exc

    # -- actions ------------------------------------------------------------------------

    def _action(self, action_type: str) -> Response:
        if action_type == "InstanceStart":
            if self.guest is not None:
                raise Fault(POST_BOOT_ONLY)
            self._start()
            return Response(204)
        if self.guest is None:  # FlushMetrics and SendCtrlAltDel need a running VM
            raise Fault(PRE_BOOT_ONLY)
        if action_type == "SendCtrlAltDel":
            try:
                self.guest.send_ctrl_alt_del()
            except (GuestError, OSError) as exc:
                raise Fault(f"Internal VMM error: {exc}") from exc
        return Response(204)

    def _start(self) -> None:
        prefix = "Start microvm error: "
        boot = self.res.boot
        if boot is None:
            raise Fault(prefix + "Cannot start microvm without kernel configuration.")
        try:
            devices.check_elf_kernel(boot["kernel_image_path"])
        except devices.DeviceError as exc:
            raise Fault(
                prefix + "System configuration error: Cannot load kernel due to invalid memory "
                f"configuration or invalid kernel image: {exc}"
            ) from exc
        agent = self._agent_bridge("agent")
        exec_port = self._agent_bridge("exec")
        try:
            self.guest = Guest(self._guest_spec(boot, agent, exec_port), self.log)
            if agent is not None and exec_port is not None and self.res.vsock is not None:
                self.res.vsock.attach(AGENT_VSOCK_PORT, agent.getsockname())
                self.res.vsock.attach(EXEC_VSOCK_PORT, exec_port.getsockname())
        except GuestError as exc:
            raise Fault(prefix + f"Internal error while starting microVM: {exc}") from exc
        finally:
            for bridge in (agent, exec_port):
                if bridge is not None:
                    bridge.close()  # QEMU holds its own copy of the listening socket
        self.log.info("Successfully started microvm")

    def _agent_bridge(self, port: str) -> socket.socket | None:
        """With a vsock device: where QEMU's virtio-serial agent port will listen.

        An abstract Unix socket (no file to leave behind), handed to QEMU as its chardev.
        """
        if self.res.vsock is None:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(f"\0fcstandin-{os.getpid()}-{secrets.token_hex(4)}-{port}")
        sock.listen(4)
        return sock

    def _guest_spec(
        self, boot: dict[str, Any], agent: socket.socket | None, exec_port: socket.socket | None
    ) -> GuestSpec:
        drives = tuple(
            DriveSpec(
                d.config["path_on_host"], bool(d.config["is_read_only"]), d.config["cache_type"]
            )
            for d in self.res.drives
        )
        nets = tuple(NetSpec(n.tap_fd, n.config["guest_mac"]) for n in self.res.nets)
        machine = self.res.machine
        return GuestSpec(
            kernel=boot["kernel_image_path"],
            initrd=boot["initrd_path"],
            cmdline=self._cmdline(boot["boot_args"]),
            vcpus=machine["vcpu_count"],
            memory_mib=machine["mem_size_mib"],
            drives=drives,
            nets=nets,
            agent_fd=agent.fileno() if agent is not None else None,
            exec_fd=exec_port.fileno() if exec_port is not None else None,
        )

    def _cmdline(self, boot_args: str | None) -> str:
        """What Firecracker hands the kernel: the boot args plus what its builder inserts."""
        text = (boot_args if boot_args is not None else DEFAULT_KERNEL_CMDLINE).strip()
        args, sep, init_args = text.partition(" -- ")
        extra = ["pci=off"]  # builder.rs: inserted unless --enable-pci
        root = self.res.drives[0].config if self.res.drives else None
        if root is not None and root["is_root_device"]:
            where = f"PARTUUID={root['partuuid']}" if root["partuuid"] else "/dev/vda"
            extra += [f"root={where}", "ro" if root["is_read_only"] else "rw"]
        khz = host_tsc_khz()
        if khz and "tsc_early_khz=" not in args:
            extra.append(f"tsc_early_khz={khz}")  # stand-in only: TCG, see guest.py
        return " ".join([args, *extra]) + (f" -- {init_args}" if sep else "")

    def stop_guest(self) -> None:
        if self.guest is not None:
            self.guest.kill()
