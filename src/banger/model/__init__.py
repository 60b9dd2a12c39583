"""The domain model: plain values and rules with no I/O (stdlib only).

Imports nothing of banger but ``banger.errors``."""
