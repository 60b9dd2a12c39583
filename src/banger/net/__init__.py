"""VM networking: addresses and names, the bridge, the TAP pool and NAT (SPEC §4).

``addressing`` and ``nat`` are pure; ``rtnl`` is the netlink work on the bridge and
TAPs; every root-only step goes through ``privileged.PrivilegedOps``; ``taps.TapPool``
builds the warm TAP pool on top of it.
Importing this package imports nothing else: pyroute2 loads only with ``privileged``,
which the CLI never needs.
"""
