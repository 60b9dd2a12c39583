"""``banger-helper``: the command line of the narrow root helper (SPEC §9).

Owns: parsing the few options (``--owner``, ``--config``, ``--socket``), refusing to run
as anyone but root, logging to stderr (journald under systemd), signal handling, and
rendering a start-up failure as one line and a hint.

Must not: import anything beyond ``banger.errors``, ``banger.model``, ``banger.host`` and
``banger.net`` (tests/unit/test_layers.py checks it, and that pydantic, fastapi, click and
rich never load): the helper runs as root, so it stays small.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from banger.errors import BangerError, PermissionDenied
from banger.helper import helper_config
from banger.helper.connections import HelperServer
from banger.helper.listen import bind
from banger.helper.verbs import Verbs
from banger.host import buildinfo
from banger.host.runner import DEFAULT_PATH, Runner
from banger.net.privileged import InProcessPrivilegedOps

log = logging.getLogger("banger.helper")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="banger-helper",
        description="The root helper of banger: bridge, TAPs, NAT and ~vm routing for the "
        "owner's unprivileged daemon, every request re-validated.",
    )
    parser.add_argument(
        "--owner",
        action="append",
        default=[],
        metavar="USER",
        help="user (name or uid) whose daemon may call the helper; repeatable; replaces "
        "owners from the config file",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"root-owned config file (default: {helper_config.DEFAULT_CONFIG} if present)",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=helper_config.DEFAULT_SOCKET,
        help=f"socket to listen on (default: {helper_config.DEFAULT_SOCKET})",
    )
    parser.add_argument("--version", action="store_true", help="print the build and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every netlink step")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        print(f"banger-helper {buildinfo.current().describe()}")
        return 0
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return _run(args)
    except BangerError as exc:
        print(f"banger-helper: error: {exc.brief}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise PermissionDenied(
            "banger-helper must run as root (it creates the bridge and TAPs)",
            hint="sudo banger-helper --owner $USER",
        )
    os.umask(0o077)
    path = args.config
    if path is None and helper_config.DEFAULT_CONFIG.exists():
        path = helper_config.DEFAULT_CONFIG
    config = helper_config.load(path, owners=args.owner)
    _warn_if_code_is_not_roots()
    # A fixed PATH: nft and resolvectl come from the system's directories, whatever the
    # environment of whoever started the helper says.
    runner = Runner(extra_env={"PATH": DEFAULT_PATH})
    ops = InProcessPrivilegedOps(runner, bridge_name=config.bridge_name)
    verbs = Verbs(config, ops, buildinfo.current())
    listener = bind(args.socket, helper_config.socket_group(config))
    server = HelperServer(listener, verbs, config.owners)

    def _stop(signum: int, _: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        server.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "serving uid(s) %s on %s: bridge %s %s",
        ", ".join(map(str, config.owners)),
        args.socket,
        config.bridge_name,
        config.bridge_address,
    )
    try:
        server.serve()
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            args.socket.unlink()
    return 0


def _warn_if_code_is_not_roots() -> None:
    """Whoever can write the code root runs is root: say so when that is not only root.

    Run from a developer's own virtualenv (``sudo .venv/bin/banger-helper``) that is the
    developer, who has sudo anyway; an installed helper must be root's alone.
    """
    package = Path(__file__).resolve().parents[1]  # .../banger
    for path in (package, Path(sys.prefix).resolve()):
        st = path.stat()
        if st.st_uid != 0 or st.st_mode & 0o022:
            log.warning(
                "running code from %s, which uid %d (or others) can write: whoever can write "
                "it can run code as root; install banger root-owned for a lasting setup",
                path,
                st.st_uid,
            )


if __name__ == "__main__":
    sys.exit(main())
