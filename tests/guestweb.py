"""What the e2e tests check of a running guest that carries banger's agent (SPEC §8):
`vm health`, and a web listener started in the guest showing in `vm ports` as a link.

The web listener is a few lines of python3 answering HTTP/1.0 (the images have
python3-minimal, which lacks ``http.server``).
"""

from __future__ import annotations

import base64
import json
import time

from tests.vmenv import VmEnv

# Answers every connection with a small HTTP/1.0 page: what `vm ports` probes for.
WEB_SERVER = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET6)\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('::', 8000)); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept(); c.settimeout(5)\n"
    "    try:\n"
    "        c.recv(4096)\n"
    "        c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n"
    "    except OSError:\n"
    "        pass\n"
    "    c.close()\n"
)


def check_health_and_web_port(env: VmEnv, name: str) -> None:
    """`vm health` answers with the VM's hostname; a web server started in the guest shows
    in `vm ports` as one http link (dual-stack socket merged), sshd as a plain endpoint."""
    health = env.json("vm", "health", name)["health"]
    assert health["ok"] is True and health["hostname"] == name
    assert health["uptime_s"] > 0 and health["agent_version"]

    # `vm ssh NAME -- ARGS` joins ARGS into one remote command line, as ssh does
    script = base64.b64encode(WEB_SERVER.encode()).decode()
    env.ok(
        "vm", "ssh", name, "--",
        f"echo {script} | base64 -d > /tmp/web.py && (nohup python3 /tmp/web.py >/dev/null 2>&1 &)",
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while f"http://{name}.vm:8000" not in (listing := env.ok("vm", "ports", name)):
        assert time.monotonic() < deadline, listing
        time.sleep(1)
    rows = [line.split() for line in listing.splitlines()]
    assert rows[0] == ["PROTO", "ENDPOINT", "PROCESS", "COMMAND"], listing
    web = [row for row in rows if row[1] == f"http://{name}.vm:8000/"]
    # one row for the dual-stack socket; sshd is a plain endpoint (not a web port)
    assert len(web) == 1 and web[0][0] == "tcp" and web[0][2] == "python3", listing
    assert any(row[1] == f"{name}.vm:22" and row[2] == "sshd" for row in rows), listing
    ports = env.json("vm", "ports", name)["ports"]
    assert any(p["port"] == 8000 and p.get("scheme") == "http" for p in ports), json.dumps(ports)
