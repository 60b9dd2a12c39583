"""The host layer: subprocesses, process facts, paths, crash-safe publication, build stamp.

Imports only ``banger.errors`` and ``banger.model``."""
