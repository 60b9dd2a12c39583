"""``banger system``: setting up ``banger-helper`` and the owner's daemon as systemd units.

Runs as root in the CLI process (never through the daemon). ``units`` renders the two
hardened unit files, ``manifest`` records what an install created, ``owner`` does the
few things that must happen as the owner (reading their config, making their state
directories), ``install`` the install/uninstall/restart steps and ``status`` the report.
Imports the helper's config (its defaults and validators) and the daemon's config loader,
nothing of the API or the CLI.
"""
