"""bangerd: the daemon that owns all state and all VMs."""
