"""``HelperPrivilegedOps``: the ``PrivilegedOps`` seam served by ``banger-helper``.

Owns: one Unix-socket connection per call to the root helper (bounded connect, write and
read), the ``hello`` exchange (protocol and build of the helper, the network it manages),
and rebuilding the helper's error replies as the same typed ``BangerError``s the
in-process implementation raises. An unreachable helper is ``HelperUnavailable``, whose
wording names the privilege mode ("none") and the fix.

Must not: do privileged work itself or decide policy (the helper re-checks everything);
block the daemon's event loop (like every ``PrivilegedOps``, call it from a thread).
"""

from __future__ import annotations

import os
import pwd
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.errors import (
    ERROR_CLASSES,
    BadResponse,
    BangerError,
    HelperUnavailable,
    Timeout,
    error_from_payload,
)
from banger.net.helper_wire import (
    MAX_REPLY_BYTES,
    PROTOCOL_VERSION,
    Verb,
    decode_object,
    encode_frame,
    read_frame,
    read_frame_and_fd,
    request,
)

CONNECT_TIMEOUT_S = 2.0
#: nft gets 30 s inside the helper; a call may take that long and a little more.
CALL_TIMEOUT_S = 45.0


@dataclass(frozen=True)
class HelperHello:
    protocol: int
    build: dict[str, str]
    bridge_name: str
    bridge_address: str
    cidr: str

    def describe(self) -> str:
        return (
            f"banger-helper {self.build.get('version', '?')} "
            f"(commit {self.build.get('commit', '?')}): bridge {self.bridge_name} "
            f"{self.bridge_address}"
        )


class HelperPrivilegedOps:
    """Root-only network steps, asked of the helper listening on ``socket_path``."""

    def __init__(self, socket_path: Path, *, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._hello: HelperHello | None = None

    def hello(self) -> HelperHello:
        """Who answers: refuses a helper speaking another protocol version."""
        reply = self._call(Verb.HELLO, {})
        if not isinstance(reply, dict) or reply.get("protocol") != PROTOCOL_VERSION:
            got = reply.get("protocol") if isinstance(reply, dict) else None
            raise HelperUnavailable(
                f"the banger-helper on {self.socket_path} speaks protocol {got!r}, this daemon "
                f"{PROTOCOL_VERSION}",
                hint="restart the helper from the same banger installation as the daemon",
            )
        try:
            hello = HelperHello(
                protocol=int(reply["protocol"]),
                build={str(k): str(v) for k, v in dict(reply["build"]).items()},
                bridge_name=str(reply["bridge_name"]),
                bridge_address=str(reply["bridge_address"]),
                cidr=str(reply["cidr"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadResponse(f"malformed hello from banger-helper: {exc}") from None
        with self._lock:
            self._hello = hello
        return hello

    # -- PrivilegedOps --------------------------------------------------------------------

    def ensure_bridge(self, name: str, address_cidr: str) -> None:
        self._checked(Verb.ENSURE_BRIDGE, {"name": name, "address": address_cidr})

    def create_tap(self, name: str, *, bridge: str, owner_uid: int) -> None:
        self._checked(Verb.CREATE_TAP, {"name": name, "bridge": bridge, "owner_uid": owner_uid})

    def delete_tap(self, name: str) -> None:
        self._checked(Verb.DELETE_TAP, {"name": name})

    def list_taps(self, *, owner_uid: int | None = None) -> list[str]:
        try:
            names = self._checked(Verb.LIST_TAPS, {"owner_uid": owner_uid})
        except HelperUnavailable:
            # Listing needs no privilege: a daemon started before its helper (or without
            # one) still sweeps nothing by mistake and starts; creating is what fails.
            from banger.net.privileged import list_our_taps

            return list_our_taps(owner_uid)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadResponse("banger-helper sent a malformed TAP list")
        return names

    def open_tap(self, name: str, *, owner_uid: int) -> int:
        """The helper opens the TAP (as root, so ``/dev/net/tun`` may be 0600) and passes
        the descriptor over its socket (SCM_RIGHTS). ``owner_uid`` is this process's own:
        the helper checks the TAP against the caller's SO_PEERCRED uid, not this value."""
        del owner_uid
        with self._lock:
            greeted = self._hello is not None
        if not greeted:
            self.hello()
        result, fd = self._exchange(Verb.OPEN_TAP, {"name": name}, want_fd=True)
        if fd == -1:
            raise BadResponse(f"banger-helper open-tap {name}: no descriptor came with the reply")
        if result is not None:
            os.close(fd)
            raise BadResponse(f"banger-helper open-tap {name}: malformed reply")
        return fd

    def ensure_nat(self, bridge: str, cidr: str) -> None:
        self._checked(Verb.NAT_ON, {"bridge": bridge, "cidr": cidr})

    def remove_nat(self) -> None:
        self._checked(Verb.NAT_OFF, {})

    def enable_ip_forward(self) -> None:
        self._checked(Verb.IP_FORWARD, {})

    def route_vm_domain(self, bridge: str, dns_port: int) -> bool:
        routed = self._checked(Verb.ROUTE_VM_DOMAIN, {"bridge": bridge, "dns_port": dns_port})
        if not isinstance(routed, bool):
            raise BadResponse("banger-helper sent a malformed route-vm-domain reply")
        return routed

    # -- the wire -------------------------------------------------------------------------

    def _checked(self, verb: Verb, args: dict[str, Any]) -> object:
        """``verb`` after a successful hello (once per helper process we talk to)."""
        with self._lock:
            greeted = self._hello is not None
        if not greeted:
            self.hello()
        try:
            return self._call(verb, args)
        except HelperUnavailable:
            with self._lock:
                self._hello = None  # a restarted helper may be another build: greet again
            raise

    def _call(self, verb: Verb, args: dict[str, Any]) -> object:
        return self._exchange(verb, args, want_fd=False)[0]

    def _exchange(self, verb: Verb, args: dict[str, Any], *, want_fd: bool) -> tuple[object, int]:
        """One request; the reply's result and (``want_fd``) the descriptor it carried."""
        deadline = time.monotonic() + self._timeout_s
        fd = -1
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            try:
                sock.connect(str(self.socket_path))
            except OSError as exc:
                raise unavailable(self.socket_path, exc) from None
            try:
                sock.sendall(encode_frame(request(verb, args)))
                if want_fd:
                    body, fd = read_frame_and_fd(sock, limit=MAX_REPLY_BYTES, deadline=deadline)
                else:
                    body = read_frame(sock, limit=MAX_REPLY_BYTES, deadline=deadline)
                reply = _decoded(body, fd)
            except Timeout:
                raise Timeout(
                    f"banger-helper did not answer {verb} within {self._timeout_s:g} s"
                ) from None
            except BangerError as exc:
                raise BadResponse(f"banger-helper {verb}: {exc.brief}") from None
            except OSError as exc:
                raise BadResponse(f"banger-helper {verb}: connection failed: {exc}") from None
        if reply.get("ok") is True:
            return reply.get("result"), fd
        if fd != -1:
            os.close(fd)
        error = reply.get("error")
        if reply.get("ok") is False and isinstance(error, dict) and _has_message(error):
            raise _rebuilt(reply)
        raise BadResponse(f"banger-helper {verb}: malformed reply", details=repr(reply)[:300])


def _decoded(body: bytes, fd: int) -> dict[str, Any]:
    try:
        return decode_object(body)
    except BaseException:
        if fd != -1:
            os.close(fd)
        raise


def _has_message(body: dict[str, Any]) -> bool:
    return isinstance(body.get("message"), str)


def _rebuilt(reply: dict[str, Any]) -> BangerError:
    err = error_from_payload(reply, status=0)
    code = reply["error"].get("code")
    if code not in ERROR_CLASSES:
        # A helper of a newer build may know codes we do not: keep its words.
        err.details = f"banger-helper error code {str(code)[:40]!r}"
    return err


def _helper_command(name: str = "banger-helper") -> str:
    """A script next to this interpreter (sudo's PATH rarely has a virtualenv's bin)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def unavailable(path: Path, exc: OSError | None = None) -> HelperUnavailable:
    """Privilege mode "none": not root, and no helper answers. Names the fix."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    reason = f" ({exc.strerror or exc})" if exc is not None else ""
    return HelperUnavailable(
        f"no banger-helper answers on {path}{reason}: this daemon runs as {user} (uid {uid}), "
        "not root, so it cannot create the bridge and TAPs (privilege mode: none)",
        hint=f"set the helper up as a service: `sudo {_helper_command(name='banger')} system "
        f"install --owner {user}`, or start it in the foreground: `sudo {_helper_command()} "
        f"--owner {user}`; or run the daemon as root; or use rootless mode (no helper, no "
        'root: user-mode networking) with privilege_mode = "auto" in config.toml',
    )
