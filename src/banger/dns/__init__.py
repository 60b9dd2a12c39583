"""DNS for VMs (SPEC §4): ``<vm-name>.vm`` resolves to a running VM's address.

``answers`` is the pure query → reply function; ``server`` is the daemon's loopback
UDP server around it. Routing the host's resolver to it is described in
docs/dns-routing.md.
"""
