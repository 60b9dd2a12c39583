"""Services: the daemon's use cases, combining state, host and subsystems."""
