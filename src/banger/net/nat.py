"""The nftables scripts for banger's own ``inet banger`` table (pure text).

Owns: the table layout (a NAT postrouting chain and a forward chain) and the scripts that
install or remove it in one ``nft -f -`` transaction. Must not: run nft (the privileged
ops do) or accept unvalidated names: the bridge name is interpolated into the script, so
callers pass it through ``addressing.validate_bridge_name`` and the CIDR through
``validate_private_cidr`` first, and this module checks again.
"""

from __future__ import annotations

from banger.model.addressing import validate_bridge_name, validate_private_cidr

TABLE_FAMILY = "inet"
TABLE_NAME = "banger"
TABLE = f"{TABLE_FAMILY} {TABLE_NAME}"

# Declaring the table first makes the delete valid even when the table does not exist, so
# one transaction replaces whatever a crashed earlier run left: rules are never duplicated
# and no packet sees a half-built table (nft applies the whole file or nothing).
# (`destroy table` would say this directly but needs nftables >= 1.0.8; bookworm has 1.0.6.)
_DROP_TABLE = f"table {TABLE}\ndelete table {TABLE}\n"


def ensure_script(bridge: str, cidr: str) -> str:
    """The script that (re)creates the table for guests on ``bridge`` in ``cidr``."""
    bridge = validate_bridge_name(bridge)
    network = validate_private_cidr(cidr)
    return _DROP_TABLE + (
        f"table {TABLE} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        # Traffic between guests or to the host stays on the bridge and keeps its source.
        f'    ip saddr {network} oifname != "{bridge}" counter masquerade\n'
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy accept;\n"
        f'    iifname "{bridge}" counter accept\n'
        f'    oifname "{bridge}" counter accept\n'
        "  }\n"
        "}\n"
    )


def remove_script() -> str:
    """The script that deletes the table, and succeeds when it is already gone."""
    return _DROP_TABLE
