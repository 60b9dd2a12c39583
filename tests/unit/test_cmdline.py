"""The guest kernel command line (banger.model.cmdline): what a TCG guest gets on top of
the boot contract, and what it does not get otherwise."""

from __future__ import annotations

from banger.model.cmdline import BootArgs, kernel_cmdline


def test_a_tcg_guest_gets_the_host_tsc_rate_and_a_reliable_tsc() -> None:
    words = kernel_cmdline(BootArgs(hostname="a", tsc_khz=2_600_000)).split()
    assert words[words.index("tsc_early_khz=2600000") + 1] == "tsc=reliable"


def test_without_a_tsc_rate_the_tsc_is_not_declared_reliable() -> None:
    words = kernel_cmdline(BootArgs(hostname="a")).split()
    assert not any(w.startswith("tsc") for w in words), words


def test_norandmaps_only_when_asked() -> None:
    assert "norandmaps" in kernel_cmdline(BootArgs(hostname="a", norandmaps=True)).split()
    assert "norandmaps" not in kernel_cmdline(BootArgs(hostname="a")).split()
