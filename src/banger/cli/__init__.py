"""banger's command-line interface: a thin client of the daemon."""
