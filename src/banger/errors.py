"""The one error model of banger (DESIGN.md rule 3).

Owns: the ``BangerError`` tree, each class with a stable ``code`` and an HTTP status,
the wire payload both sides agree on, and the registry the client uses to rebuild
typed errors from a daemon reply.

Must not: render anything. Errors are rendered in exactly two places: the API's
error middleware (``banger.api.error_replies``) as JSON and the CLI's ``main()`` as text.
"""

from __future__ import annotations

from typing import Any, ClassVar

ERROR_CLASSES: dict[str, type[BangerError]] = {}


class BangerError(Exception):
    """Base of every error banger raises on purpose: a brief, details and a hint."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    #: Every class says what to do next when the raiser has nothing more specific to say
    #: (issue 14 item 16: an error the CLI prints always comes with a ``hint:`` line).
    default_hint: ClassVar[str] = (
        "`banger daemon logs` may say more; if nothing explains it, please report it"
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must define its own error code")
        if cls.code in ERROR_CLASSES:
            other = ERROR_CLASSES[cls.code].__name__
            raise TypeError(f"error code {cls.code!r} used by {other} and {cls.__name__}")
        ERROR_CLASSES[cls.code] = cls

    def __init__(self, brief: str, *, details: str | None = None, hint: str | None = None):
        super().__init__(brief)
        self.brief = brief
        self.details = details
        self.hint = hint or self.default_hint

    def to_payload(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.brief,
                "details": self.details,
                "hint": self.hint,
            }
        }


ERROR_CLASSES[BangerError.code] = BangerError


def internal_error() -> BangerError:
    """What a caller sees for an exception nobody anticipated (the log has the traceback)."""
    return BangerError(
        "internal error in the daemon",
        hint="`banger daemon logs` shows the traceback; please report it",
    )


def error_from_payload(payload: object, *, status: int) -> BangerError:
    """Rebuild the typed error a daemon reply describes (client side)."""
    body = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(body, dict) or not isinstance(body.get("message"), str):
        return BadResponse(
            f"daemon answered HTTP {status} without a banger error body",
            details=repr(payload)[:500],
        )
    cls = ERROR_CLASSES.get(str(body.get("code")), BangerError)
    err = cls.__new__(cls)
    BangerError.__init__(
        err,
        body["message"],
        details=_opt_str(body.get("details")),
        hint=_opt_str(body.get("hint")),
    )
    return err


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


# -- input ------------------------------------------------------------------------------


class InvalidArgument(BangerError):
    code = "invalid_argument"
    status = 400
    default_hint = "`banger COMMAND --help` says what each argument and option accepts"


class InvalidRequest(BangerError):
    """The request body or query did not match the API schema."""

    code = "invalid_request"
    status = 422
    default_hint = (
        "the request does not match the daemon's API: docs/reference/api.json lists each "
        "endpoint's fields and what they accept"
    )


class MethodNotAllowed(BangerError):
    code = "method_not_allowed"
    status = 405
    default_hint = (
        "the reply's Allow header lists the methods this endpoint takes (docs/reference/api.json)"
    )


class PayloadTooLarge(BangerError):
    code = "payload_too_large"
    status = 413
    default_hint = "the daemon's API takes small JSON bodies only (at most 1 MiB); send less"


class MalformedHttp(InvalidRequest):
    """Bytes on the daemon's socket that are not an HTTP/1.1 request h11 can parse."""

    code = "malformed_http"
    status = 400
    default_hint = (
        "the daemon speaks HTTP/1.1 on its socket: use the banger CLI or SDK, or "
        "`curl --unix-socket`; docs/reference/api.json describes the API"
    )


class ConfigError(BangerError):
    code = "config_invalid"
    status = 400
    default_hint = "fix the key in ~/.config/banger/config.toml (docs/config.md lists every key)"


class InvalidLayer(InvalidArgument):
    """An image layer that is malformed or built to escape its root (ADVERSARIAL A)."""

    code = "invalid_layer"
    status = 422
    default_hint = (
        "banger refuses this image's layers as malformed or unsafe: use another tag or image, "
        "or rebuild it"
    )


class ImageTooSmall(InvalidArgument):
    """The flattened tree does not fit the requested image size (ADVERSARIAL 109)."""

    code = "image_too_small"
    status = 400
    default_hint = "pull it again with a larger `--size` (`banger image pull --help`)"


class UnsupportedHost(BangerError):
    code = "unsupported_host"
    status = 400
    default_hint = "run `banger doctor` to see what this host lacks"


# -- lookups and conflicts ----------------------------------------------------------------


class NotFound(BangerError):
    code = "not_found"
    status = 404
    default_hint = "`banger vm list`, `banger image list` and `banger kernel list` show what exists"


class VmNotFound(NotFound):
    code = "vm_not_found"
    default_hint = "`banger vm list` shows the VMs that exist"


class ImageNotFound(NotFound):
    code = "image_not_found"
    default_hint = (
        "`banger image list` shows local images; `banger image pull REF` fetches one from "
        "an OCI registry"
    )


class KernelNotFound(NotFound):
    code = "kernel_not_found"
    default_hint = "`banger kernel list` shows local kernels"


class Conflict(BangerError):
    code = "conflict"
    status = 409
    default_hint = (
        "`banger vm list` and `banger image list` show what is in the way; retry once it is not"
    )


class AlreadyExists(Conflict):
    code = "already_exists"
    default_hint = (
        "choose another name, or delete the existing one first (`banger vm delete`, "
        "`banger image delete`, `banger kernel rm`)"
    )


class InUse(Conflict):
    code = "in_use"
    default_hint = "stop or delete what uses it first: `banger vm list` shows each VM and its image"


class InvalidState(Conflict):
    code = "invalid_state"
    default_hint = (
        "`banger vm show NAME` shows its state; `banger vm start` / `banger vm stop` change it"
    )


# -- access -------------------------------------------------------------------------------


class PermissionDenied(BangerError):
    code = "permission_denied"
    status = 403
    default_hint = (
        "run banger as the user that owns the daemon and its files; `banger doctor` checks "
        "this host's permissions"
    )


# -- daemon and transport -----------------------------------------------------------------


class DaemonUnavailable(BangerError):
    code = "daemon_unavailable"
    status = 503
    default_hint = "`banger daemon status` starts it; `banger daemon logs` shows why it stopped"


class DaemonAlreadyRunning(BangerError):
    code = "daemon_already_running"
    status = 409
    default_hint = "stop it with `banger daemon stop`, or use the running one"


class DaemonStartFailed(BangerError):
    code = "daemon_start_failed"
    status = 500
    default_hint = "`banger daemon logs` shows the daemon's own account"


class HelperUnavailable(BangerError):
    """Not root, and no ``banger-helper`` (of this protocol) answers (SPEC §9)."""

    code = "helper_unavailable"
    status = 503
    default_hint = "start the root helper: sudo banger-helper --owner $USER"


class BadResponse(BangerError):
    code = "bad_response"
    status = 502
    default_hint = "`banger daemon logs` has the details; if it keeps happening, please report it"


class Timeout(BangerError):
    code = "timeout"
    status = 504
    default_hint = "run it again; `banger daemon logs` shows what it was waiting for"


class ShuttingDown(BangerError):
    code = "shutting_down"
    status = 503
    default_hint = "the daemon is stopping; run the command again"


# -- host work ----------------------------------------------------------------------------


class CommandFailed(BangerError):
    code = "command_failed"
    status = 500
    default_hint = "`banger daemon logs` shows the command that failed and its output"


class NoSpace(CommandFailed):
    """A host filesystem is full or out of inodes (ADVERSARIAL 106, 108)."""

    code = "no_space"
    status = 507
    default_hint = (
        "free space or inodes on that filesystem: `banger vm list` and `banger image list` show "
        "what can be deleted"
    )


class AgentUnavailable(BangerError):
    """The guest agent does not answer on its exec channel (an image without the agent,
    a guest still booting or wedged): ``vm ssh`` still works."""

    code = "agent_unavailable"
    status = 503
    default_hint = (
        "images without banger's agent have no exec or file operations: use `banger vm ssh`"
    )


class CommandNotStarted(BangerError):
    """The guest agent could not start a command; ``details`` says why (``not_found``,
    ``permission``, ``no_cwd``, ``bad_request``, ``too_many``, ``other``)."""

    code = "command_not_started"
    status = 422
    default_hint = (
        "check that the program exists in the guest and that its directory (`--cwd`) does; "
        "`banger vm ssh NAME` lets you look"
    )


class StateError(BangerError):
    code = "state_error"
    status = 500
    default_hint = "`banger daemon logs` has the details; the state database may need attention"


class Interrupted(BangerError):
    code = "interrupted"
    status = 499
    default_hint = "run the command again; `banger vm list` shows what was kept"


# -- callers of the SDK and the MCP server -------------------------------------------------


class CommandExitError(BangerError):
    """A command run in a guest ended badly: ``CommandResult.check()`` in the SDK raises it
    (never the daemon, which reports a command's exit as data)."""

    code = "command_exit"
    status = 500
    default_hint = "the exception carries the command's exit status and the tail of its stderr"


class MissingExtra(BangerError):
    """An optional part of banger whose dependencies are not installed (``banger[mcp]``)."""

    code = "missing_extra"
    status = 501
    default_hint = "install the extra it names, e.g. `pip install 'banger[mcp]'`"


# -- files in a guest (docs/explanation/guest-files.md) -----------------------------------


class GuestPathNotFound(NotFound):
    code = "guest_path_not_found"
    default_hint = "`banger vm exec NAME -- ls -la DIR` shows what is in the guest's directory"


class IsADirectory(Conflict):
    code = "is_a_directory"
    default_hint = "`banger vm cp` copies a whole directory; `banger vm cp --help` shows how"


class NotADirectory(Conflict):
    code = "not_a_directory"
    default_hint = "a component of the path is a file, not a directory: check the path in the guest"


class GuestPathRefused(Conflict):
    """A symlink where banger will not follow one, a non-empty directory, a device."""

    code = "guest_path_refused"
    default_hint = "`banger vm exec NAME -- ls -la PATH` shows what is there"
