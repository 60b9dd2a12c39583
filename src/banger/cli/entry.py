"""The ``banger`` program: the fast ``vm exec`` when it applies, else the click CLI.

Owns: choosing between ``banger.cli.fast_exec`` (the plain ``vm exec NAME -- CMD…``
against a running daemon of this build) and ``banger.cli.main`` (everything else, and
every case the fast path hands back). Must not: import anything before that choice.
The fast path ends with ``os._exit``: its output went out through ``os.write``.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:2] == ["vm", "exec"]:
        from banger.cli import fast_exec

        try:
            status = fast_exec.run(args[2:])
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        except BrokenPipeError:
            from banger.cli.main import silence_stdout

            silence_stdout()  # the reader went away (`| head`): not an error of ours
            sys.exit(0)
        if status is not None:
            # Nothing is buffered (output went out through os.write) and nothing needs
            # finalizing: skipping the interpreter's teardown saves ~1.5 ms per call.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    from banger.cli.main import main as click_main

    click_main(args)
