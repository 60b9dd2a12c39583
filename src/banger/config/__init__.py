"""Configuration: loading config.toml, value rules, error wording, VM defaults.

Imports only ``banger.errors``, ``banger.model`` and ``banger.host``."""
