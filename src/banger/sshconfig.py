"""``python -m banger.sshconfig known-hosts VMS_DIR HOST``: kept at this path because
installed ssh configs call it by this name; the code lives in ``banger.cli.ssh_include``."""

from __future__ import annotations

import sys

from banger.cli.ssh_include import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
