"""`banger doctor` streams its checks as NDJSON stages through the daemon."""

from __future__ import annotations

import json

from tests.conftest import BangerHome


def test_doctor_json_is_a_stage_stream_ending_in_a_result(home: BangerHome) -> None:
    out = home.banger("doctor", "--json")
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events[-1]["type"] == "result"
    stages = [e for e in events if e["type"] == "stage"]
    finished = {e["stage"]: e for e in stages if e["state"] != "running"}
    running = [e["stage"] for e in stages if e["state"] == "running"]
    assert running == list(finished)  # every check announced, then concluded, in order
    assert {"architecture", "kvm", "vmm", "config", "vm defaults", "state"} <= finished.keys()
    assert finished["architecture"]["state"] == "ok"
    assert "integrity ok" in finished["state"]["detail"]
    result = events[-1]["data"]
    assert [c["name"] for c in result["checks"]] == list(finished)
    assert out.returncode == (1 if result["failed"] else 0)


def test_doctor_text_marks_each_check(home: BangerHome) -> None:
    out = home.banger("doctor")
    lines = out.stdout.splitlines()
    assert any(line.startswith("✓ architecture: x86_64") for line in lines)
    assert any(line.startswith(("✓ vm defaults", "! vm defaults")) for line in lines)
    assert "(auto)" in out.stdout or "(builtin)" in out.stdout


def test_forward_drop_chains_are_found_outside_our_table() -> None:
    from banger.services.doctor_net import forward_drop_chains

    ruleset = """table ip filter {
\tchain FORWARD {
\t\ttype filter hook forward priority filter; policy drop;
\t}
}
table inet banger {
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t}
}
table inet other {
\tchain fwd {
\t\ttype filter hook forward priority 0; policy accept;
\t}
}
"""
    assert forward_drop_chains(ruleset) == ["ip filter FORWARD"]


def test_doctor_reports_kvm_and_firewall_checks(home: BangerHome) -> None:
    out = home.banger("doctor", "--json")
    finished = {
        e["stage"]: e
        for e in map(json.loads, out.stdout.splitlines())
        if e["type"] == "stage" and e["state"] != "running"
    }
    assert {"firewall", "network", "nat", "dns"} <= finished.keys()
    # QEMU reaches the agent over virtio-serial on every host: nothing to check.
    assert "vhost-vsock" not in finished
    # The daemon's own DNS server is asked, on its port (issue 14 item 18).
    assert "answers on 127.0.0.1:" in finished["dns"]["detail"], finished["dns"]
    assert finished["nat"]["detail"].startswith(("mode root", "rootless", "through", "no NAT"))
