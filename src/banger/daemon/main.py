"""``bangerd``: start-up, serving and orderly shutdown of the daemon.

Owns: the start-up order (private dirs → config → single-instance locks (state dir, then
socket) → logs → state → leftovers → socket → serve) and undoing it on exit; nothing under
the state or runtime dir is touched before both locks are held (issue 14 item 1). While
serving, a daemon whose socket disappeared (runtime dir deleted) shuts down (item 2).
It is also the composition root: ``compose`` builds every service once, with its
collaborators, for ``create_app``.
Must not: contain request handling (``banger.api``) or use-case logic (``banger.services``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import sys
from collections.abc import Callable

import uvicorn

from banger.api.app import create_app
from banger.api.transport import PeerCheckedH11Protocol, bind_unix_socket
from banger.cli.render import format_error
from banger.config.pool_policy import resolve_pools
from banger.config.settings import load_config
from banger.config.vm_defaults import HostFacts
from banger.daemon.lock import DaemonLock
from banger.daemon.logs import setup_logging
from banger.daemon.startup import SocketWatch, clear_stale_socket, state_evidence
from banger.dns.server import DnsServer, dns_port_from_env, records_from_vms
from banger.errors import BangerError, DaemonAlreadyRunning, UnsupportedHost
from banger.guest.exec_client import ExecConnection
from banger.host import buildinfo, ramscratch
from banger.host.paths import Layout, ensure_private_dir
from banger.host.publish import cleanup_leftovers
from banger.model.records import VmRecord
from banger.model.wire import EXIT_ALREADY_RUNNING, READY_LINE, error_body
from banger.net.privilege_mode import ModeProbe, PrivilegeMode, privileged_ops
from banger.net.privileged import PrivilegedOps
from banger.services import readiness
from banger.services.artifact_rows import find_orphans, reconcile_kernel_rows
from banger.services.catalog_fetch import CatalogService
from banger.services.context import DaemonContext
from banger.services.daemon_info import start_kvm_probe
from banger.services.daemon_services import DaemonServices
from banger.services.image_pulls import ImagePullService
from banger.services.images import ImageService
from banger.services.kernel_pull import KernelPullService
from banger.services.kernels import KernelService
from banger.services.pool import PoolService
from banger.services.pool_claim import AgentGuestNamer, GuestNamer
from banger.services.readiness import PortProbe
from banger.services.reconcile import reconcile
from banger.services.vm_exec import ExecService
from banger.services.vm_files import ExecLinks, VmFileService
from banger.services.vm_monitor import VmMonitor
from banger.services.vm_network import warm_up
from banger.services.vmm_factory import HostVmms, VmmFactory
from banger.services.vms import VmService
from banger.state import repo
from banger.state.db import AsyncDatabase, Database

log = logging.getLogger("banger.daemon")

GRACEFUL_SHUTDOWN_S = 10
#: How often the daemon checks that its socket is still at its path (issue 14 item 2).
SOCKET_CHECK_INTERVAL_S = 1.0
#: Open files the daemon must be allowed: every operation in flight holds a few (its API
#: connection, a QMP or Firecracker API socket, ssh pipes, probe sockets), and 8 parallel
#: creates plus clients fit easily. Distributions default to a soft limit of 1024.
MIN_OPEN_FILES = 256
#: What a lower soft limit is raised to, when the hard limit allows it.
RAISED_OPEN_FILES = 4096


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bangerd",
        description="banger's daemon. Normally started by the `banger` CLI on first use.",
    )
    parser.add_argument("--version", action="store_true", help="print the build stamp and exit")
    parser.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.version:
        print(f"bangerd {buildinfo.current().describe()}")
        return
    try:
        run(ready_fd=args.ready_fd)
    except DaemonAlreadyRunning as err:
        sys.stderr.write(format_error(err, debug=False))
        sys.exit(EXIT_ALREADY_RUNNING)
    except BangerError as err:
        sys.stderr.write(format_error(err, debug=os.environ.get("BANGER_DEBUG") == "1"))
        _tell_launcher(args.ready_fd, error_body(err) + b"\n")
        sys.exit(1)
    finally:
        if args.ready_fd is not None:
            with contextlib.suppress(OSError):
                os.close(args.ready_fd)


def _tell_launcher(ready_fd: int | None, message: bytes) -> None:
    """One line on the launcher's ready pipe; after ``ready`` nobody reads it any more,
    so a later error goes nowhere (EPIPE is ignored)."""
    if ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(ready_fd, message)


def run(*, ready_fd: int | None = None) -> None:
    ensure_open_files_limit()
    layout = Layout.from_env()
    ensure_private_dir(layout.state_dir)
    ensure_private_dir(layout.runtime_dir)
    config = load_config(layout=layout)
    lock = DaemonLock(layout.state_lock_path, layout.lock_path, layout.socket_path)
    lock.acquire()
    try:
        setup_logging(layout.log_file, config.log_level)
        db = Database.open(layout.db_path, evidence=state_evidence(layout))
        try:
            removed = cleanup_leftovers(layout.artifact_roots())
            removed += ramscratch.sweep_dead()  # trees of image builds a crash interrupted
            clear_stale_socket(layout.socket_path)
            sock = bind_unix_socket(layout.socket_path)
            watch = SocketWatch(layout.socket_path)
            dns = DnsServer(lambda: records_from_vms(repo.list_vms(db)), port=dns_port_from_env())
            ctx = DaemonContext(
                layout=layout,
                config=config,
                db=AsyncDatabase(db),
                build=buildinfo.current(),
                host=HostFacts.probe(),
                dns=dns,
            )
            log.info(
                "daemon starting",
                extra={
                    "fields": {
                        "pid": ctx.pid,
                        "socket": str(layout.socket_path),
                        "build": ctx.build.as_dict(),
                        "leftovers_removed": [str(p) for p in removed],
                    }
                },
            )
            try:
                asyncio.run(_serve(ctx, dns, sock, ready_fd, watch))
            finally:
                if watch.intact():  # never another daemon's socket bound there since
                    layout.socket_path.unlink(missing_ok=True)
                ctx.db.close()
        finally:
            db.close()
    finally:
        log.info("daemon stopped")
        lock.release()


def ensure_open_files_limit() -> None:
    """A low soft RLIMIT_NOFILE is raised; a hard one below ``MIN_OPEN_FILES`` is refused
    at start-up (ADVERSARIAL 105), rather than failing requests at random with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = hard == resource.RLIM_INFINITY
    if not unlimited and hard < MIN_OPEN_FILES:
        raise UnsupportedHost(
            f"the open-files limit (RLIMIT_NOFILE) is {hard}: bangerd needs at least "
            f"{MIN_OPEN_FILES}",
            hint="raise it, e.g. `ulimit -n 1024` in the shell that starts banger "
            "(LimitNOFILE= in a systemd unit)",
        )
    if soft < MIN_OPEN_FILES:
        wanted = RAISED_OPEN_FILES if unlimited else min(hard, RAISED_OPEN_FILES)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class _SharedExecLinks(ExecLinks):
    """File operations ride the exec service's connection to each VM: the guest's exec
    channel (a virtio-serial port) takes one host connection at a time, so a second one
    of their own could not open while `vm exec` holds it."""

    def __init__(self, execs: ExecService) -> None:
        self._execs = execs

    async def connection(self, vm: VmRecord) -> ExecConnection:
        return await self._execs.connection(vm.name)

    async def close_all(self) -> None:
        """Nothing of its own to close: the exec service closes its connections."""


def compose(
    ctx: DaemonContext,
    *,
    ops: PrivilegedOps,
    vmms: VmmFactory,
    mode: Callable[[], PrivilegeMode],
    guest_ports: PortProbe = readiness.port_open,
    guest_namer: GuestNamer | None = None,
    forwarded_ports: PortProbe = readiness.ssh_banner,
) -> DaemonServices:
    """Every service, built once, each given its collaborators (tests pass fakes here)."""
    images = ImageService(ctx)
    kernels = KernelService(ctx)
    kernel_pulls = KernelPullService(ctx, kernels)
    image_pulls = ImagePullService(ctx, images)
    catalog = CatalogService(ctx, images, kernel_pulls, image_pulls)
    vms = VmService(
        ctx,
        ops=ops,
        vmms=vmms,
        catalog=catalog,
        mode=mode,
        guest_ports=guest_ports,
        forwarded_ports=forwarded_ports,
        guest_namer=guest_namer,
    )
    execs = ExecService(vms)
    if guest_namer is None:
        # A claim renames the guest on the connection `vm exec` then uses (one per VM).
        vms.guest_namer = AgentGuestNamer(ctx.runner, execs)
    files = VmFileService(vms, links=_SharedExecLinks(execs))
    pool = PoolService(vms, resolve_pools(ctx.config, ctx.host))
    return DaemonServices(
        ctx,
        vms,
        images,
        image_pulls,
        kernels,
        kernel_pulls,
        catalog,
        pool,
        execs=execs,
        files=files,
    )


def compose_for_host(ctx: DaemonContext) -> DaemonServices:
    """The services with this host's collaborators: the privileged ops of this daemon's
    privilege mode (root in-process, or banger-helper; rootless VMs need none), the
    installed VMMs, and the mode probe each create asks."""
    ops = privileged_ops(ctx.runner, bridge_name=ctx.config.bridge_name)
    vmms = HostVmms(ctx.config, ctx.runner, ctx.kvm_probe)
    return compose(ctx, ops=ops, vmms=vmms, mode=ModeProbe(ctx.config.privilege_mode))


def server_config(services: DaemonServices) -> uvicorn.Config:
    """The API server: the app behind banger's peer-checked h11, no lifespan, banger's
    own logging (the access log is the app's)."""
    return uvicorn.Config(
        create_app(services),
        http=PeerCheckedH11Protocol,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


async def _serve(
    ctx: DaemonContext, dns: DnsServer, sock: object, ready_fd: int | None, watch: SocketWatch
) -> None:
    services = compose_for_host(ctx)
    server = uvicorn.Server(server_config(services))
    await dns.start()
    try:
        await reconcile(services.vms)
        await reconcile_kernel_rows(ctx)
        for orphan in await find_orphans(ctx):
            log.warning(
                "published dir without a row",
                extra={"fields": {"path": str(orphan.path), "remove_with": orphan.remedy}},
            )
        await services.vms.publish_dns()
        await start_kvm_probe(ctx)
        vms = services.vms
        warming = asyncio.create_task(warm_up(vms.network, vms.taps, vms.addresses.mode_now))
        monitor = VmMonitor(services.vms)
        monitor.start()
        # After reconcile: living pool VMs were re-adopted, dead ones are pruned and refilled.
        services.pool.start()
        watcher = asyncio.create_task(_watch(server, ctx, ready_fd, watch))
        try:
            await server.serve(sockets=[sock])  # type: ignore[list-item]
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await services.pool.stop()
            await monitor.stop()
            await services.execs.aclose()
            await services.files.links.close_all()
            await services.vms.sweeper.drain()
            with contextlib.suppress(asyncio.CancelledError):
                await warming  # no thread of it left mid-way
    finally:
        dns.close()


async def _watch(
    server: uvicorn.Server, ctx: DaemonContext, ready_fd: int | None, watch: SocketWatch
) -> None:
    while not server.started:
        await asyncio.sleep(0.005)
    log.info("daemon ready")
    # The fd stays open until main() returns: it closes it, whatever happened.
    _tell_launcher(ready_fd, READY_LINE + b"\n")
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.shutdown_requested.wait(), SOCKET_CHECK_INTERVAL_S)
            log.info("shutdown requested over the API")
            break
        if not watch.intact():
            # No client can reach us any more (the runtime dir was deleted, say): stop,
            # releasing the DNS port and the locks, so that the next auto-start works.
            log.warning(
                "socket gone: shutting down",
                extra={"fields": {"socket": str(watch.path)}},
            )
            break
    server.should_exit = True
