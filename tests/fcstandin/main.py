"""The stand-in process: Firecracker's command line, its threads, its way of ending.

Owns: parsing arguments with Firecracker's ``utils::arg_parser`` rules and messages and
its exit codes (153 bad arguments, 152 bad logger level, 1 other errors), binding the API
socket, the VMM loop on the main thread (API threads hand it one request at a time, as
Firecracker's API thread hands requests to its VMM thread), and ending: with the guest
(exit 0 after a clean guest shutdown), on Firecracker's fatal signals (logged as
"Shutting down VM after intercepting signal N, code C." with its exit codes), and on
SIGTERM/SIGINT by dying of the signal as Firecracker does (no handler there) — always
killing QEMU first. The API socket is left in place, as Firecracker leaves it.
Must not: implement request semantics (``machine``) or HTTP (``httpd``).
"""

from __future__ import annotations

import os
import queue
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

from tests.fcstandin import FIRECRACKER_VERSION, routes
from tests.fcstandin.fclog import LEVELS, FcLog
from tests.fcstandin.httpd import DEFAULT_PAYLOAD_LIMIT, ApiServer, Request, Response, fault
from tests.fcstandin.machine import Machine

EXIT_GENERIC = 1
EXIT_BAD_CONFIGURATION = 152
EXIT_ARG_PARSING = 153
#: Firecracker's signal handlers: signal -> exit code (src/vmm/src/signal_handler.rs).
FATAL_SIGNALS = {
    signal.SIGBUS: 149,
    signal.SIGSEGV: 150,
    signal.SIGXFSZ: 151,
    signal.SIGXCPU: 154,
    signal.SIGHUP: 156,
    signal.SIGILL: 157,
    signal.SIGSYS: 2,  # only a seccomp SIGSYS (si_code 1) gets 148; a kill() is "unexpected"
}
VALUE_ARGS = {
    "api-sock", "id", "seccomp-filter", "start-time-us", "start-time-cpu-us",
    "parent-cpu-time-us", "config-file", "metadata", "log-path", "level", "module",
    "metrics-path", "describe-snapshot", "http-api-max-payload-size", "mmds-size-limit",
}  # fmt: skip
FLAG_ARGS = {
    "no-seccomp", "no-api", "show-level", "show-log-origin", "boot-timer", "version",
    "snapshot-version", "enable-pci",
}  # fmt: skip
HELP = f"Firecracker v{FIRECRACKER_VERSION} (banger test stand-in: API + QEMU/TCG)\n"


class ArgError(Exception):
    def __init__(self, text: str, debug: str) -> None:
        super().__init__(text)
        self.text = text
        self.debug = debug


@dataclass
class Args:
    values: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)


def parse_args(argv: Sequence[str]) -> Args:
    """Firecracker's ``Arguments::parse``: ``--name [value]`` pairs, nothing positional."""
    args = Args()
    tokens = list(argv)
    if "--" in tokens:
        tokens = tokens[: tokens.index("--")]
    if "--help" in tokens or "-h" in tokens:
        args.flags.add("help")
        return args
    if "--version" in tokens:
        args.flags.add("version")
        return args
    it = iter(tokens)
    for token in it:
        name = token[2:] if token.startswith("--") else None
        if name is None or name not in VALUE_ARGS | FLAG_ARGS:
            bad = name if name is not None else token
            raise ArgError(
                f"Found argument '{bad}' which wasn't expected, or isn't valid in this context.",
                f'UnexpectedArgument("{bad}")',
            )
        if name in args.values or name in args.flags:
            raise ArgError(
                f"The argument '{name}' was provided more than once.",
                f'DuplicateArgument("{name}")',
            )
        if name in FLAG_ARGS:
            args.flags.add(name)
            continue
        value = next(it, None)
        if value is None or value.startswith("--"):
            raise ArgError(
                f"The argument '{name}' requires a value, but none was supplied.",
                f'MissingValue("{name}")',
            )
        args.values[name] = value
    if "no-api" in args.flags and "--config-file" not in tokens:
        raise ArgError(
            "Argument 'config-file' required, but not found.", 'MissingArgument("config-file")'
        )
    return args


def validate_instance_id(instance_id: str) -> str | None:
    """Firecracker's ``validate_instance_id``: the error text, or None when valid."""
    size = len(instance_id.encode())
    if not 1 <= size <= 64:
        return f"InvalidLen({size}, 1, 64)"
    for index, char in enumerate(instance_id):
        if not (char == "-" or char.isalnum()):
            return f"InvalidChar({char!r}, {index})"
    return None


def main(argv: Sequence[str]) -> int:
    try:
        args = parse_args(argv[1:])
    except ArgError as exc:
        return _fail(
            FcLog("anonymous-instance"),
            f"Arguments parsing error: {exc.text} \n\nFor more information try --help.",
            f"ParseArguments({exc.debug})",
            EXIT_ARG_PARSING,
        )
    if "help" in args.flags or "version" in args.flags:
        sys.stdout.write(f"Firecracker v{FIRECRACKER_VERSION}\n\n")
        if "help" in args.flags:
            sys.stdout.write(HELP)
        return 0
    return _run(args)


def _run(args: Args) -> int:
    instance_id = args.values.get("id", "anonymous-instance")
    problem = validate_instance_id(instance_id)
    log = FcLog(instance_id)
    if problem is not None:
        log.error(f"Firecracker panicked at main.rs: Invalid instance ID: {problem}", thread="main")
        os.abort()  # Firecracker is built with panic=abort
    early = _configure_log(log, args)
    if early is not None:
        return early
    log.info(f"Running Firecracker v{FIRECRACKER_VERSION}", thread="main")
    if "config-file" in args.values:
        return _fail(
            log,
            "The Firecracker stand-in does not support --config-file: configure it through "
            "the API.",
            'Unsupported("config-file")',
            EXIT_GENERIC,
        )
    if "api-sock" not in args.values:
        # Firecracker would bind /run/firecracker.socket; a test must never touch that.
        return _fail(
            log,
            "Arguments parsing error: Argument 'api-sock' required, but not found. \n\n"
            "For more information try --help.",
            'ParseArguments(MissingArgument("api-sock"))',
            EXIT_ARG_PARSING,
        )
    return _serve(log, args, instance_id)


def _configure_log(log: FcLog, args: Args) -> int | None:
    level = args.values.get("level")
    if level is not None and level.lower() not in (*LEVELS, "warning"):
        return _fail(
            log,
            "Invalid value for logger level: Failed to parse string to level filter: "
            f"{level}.Possible values: [Error, Warning, Info, Debug]",
            f'InvalidLogLevel(LevelFilterFromStrError("{level}"))',
            EXIT_BAD_CONFIGURATION,
        )
    normalized = (
        None if level is None else ("warn" if level.lower() == "warning" else level.lower())
    )
    try:
        log.configure(
            log_path=args.values.get("log-path"),
            level=normalized,
            show_level=True if "show-level" in args.flags else None,
        )
    except OSError as exc:
        return _fail(
            log,
            f"Could not initialize logger: Failed to open target file: {exc.strerror}",
            "LoggerInitialization",
            EXIT_GENERIC,
        )
    return None


def _fail(log: FcLog, text: str, debug: str, code: int) -> int:
    log.error(text, thread="main")
    sys.stderr.write(f"Error: {debug}\n")
    sys.stderr.flush()
    log.error(f"Firecracker exiting with error. exit_code={code}", thread="main")
    return code


def _serve(log: FcLog, args: Args, instance_id: str) -> int:
    path = args.values["api-sock"]
    limit = int(args.values.get("http-api-max-payload-size", DEFAULT_PAYLOAD_LIMIT))
    machine = Machine(instance_id, log)
    inbox: queue.Queue[tuple[Request, queue.Queue[Response]]] = queue.Queue()

    def hand_to_vmm(request: Request) -> Response:
        reply: queue.Queue[Response] = queue.Queue(maxsize=1)
        inbox.put((request, reply))
        return reply.get()

    try:
        server = ApiServer(path, hand_to_vmm, log, payload_limit=limit)
    except OSError as exc:
        if exc.errno == 98:  # EADDRINUSE: the path exists
            return _fail(
                log,
                f"RunWithApiError error: Failed to open the API socket at: {path}. Check that "
                "it is not already used.",
                f'RunWithApi(FailedToBindSocket("{path}"))',
                EXIT_GENERIC,
            )
        return _fail(
            log,
            f"RunWithApiError error: Failed to bind and run the HTTP server: IO error: {exc}",
            "RunWithApi(FailedToBindAndRunHttpServer(IOError))",
            EXIT_GENERIC,
        )
    log.info(f'Listening on API socket ("{path}").', thread="fc_api")
    _install_signal_handlers(machine, log)
    server.start()
    return _vmm_loop(machine, inbox, log)


def _vmm_loop(
    machine: Machine, inbox: queue.Queue[tuple[Request, queue.Queue[Response]]], log: FcLog
) -> int:
    while True:
        try:
            request, reply = inbox.get(timeout=0.1)
        except queue.Empty:
            pass
        else:
            reply.put(_answer(machine, request, log))
        if machine.guest is not None and (status := machine.guest.poll()) is not None:
            log.info("Vmm is stopping.")
            code = 0 if status == 0 else EXIT_GENERIC
            if code:
                log.error(f"stand-in: QEMU exited with status {status}")
                log.error(f"Firecracker exiting with error. exit_code={code}", thread="main")
            else:
                log.info("Firecracker exiting successfully. exit_code=0", thread="main")
            return code


def _answer(machine: Machine, request: Request, log: FcLog) -> Response:
    described = f"{request.method} request on {request.path!r}"
    if request.body is not None:
        described += f" with body {request.body.decode(errors='replace')!r}"
    log.info(f"The API server received a {described}.", thread="fc_api")
    try:
        action = routes.parse(request)
    except routes.RouteError as exc:
        log.error(exc.message, thread="fc_api")
        return fault(exc.status, exc.message)
    return machine.handle(action)


def _install_signal_handlers(machine: Machine, log: FcLog) -> None:
    def fatal(signum: int, _frame: FrameType | None) -> None:
        log.error(f"Shutting down VM after intercepting signal {signum}, code 0.")
        machine.stop_guest()
        os._exit(FATAL_SIGNALS[signal.Signals(signum)])

    def terminate(signum: int, _frame: FrameType | None) -> None:
        # Firecracker has no handler for these: the default action ends it. QEMU first.
        machine.stop_guest()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in FATAL_SIGNALS:
        signal.signal(sig, fatal)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, terminate)
