"""``model.records.not_running``: one wording, in every layer, for "this needs the VM
running" (issue 14 item 19: it used to read "VM 'x' is error, not running")."""

from __future__ import annotations

from banger.model.records import VmState, not_running


def test_the_state_in_words_and_the_way_on() -> None:
    assert not_running("x", VmState.STOPPED.value) == (
        "VM 'x' is in state stopped, not running",
        "`banger vm start x`",
    )
    brief, hint = not_running("x", VmState.ERROR.value)
    assert brief == "VM 'x' is in state error, not running"
    assert "`banger vm show x`" in hint and hint.startswith("`banger vm start x`")


def test_a_row_still_saying_running_is_not_repeated_back() -> None:
    """The process is gone but the row has not caught up: not "in state running, not
    running"."""
    brief, hint = not_running("x", VmState.RUNNING.value)
    assert brief == "VM 'x' is not running: its VMM process has exited"
    assert hint == "`banger vm start x`"
