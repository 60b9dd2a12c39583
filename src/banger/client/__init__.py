"""The daemon's client, for the CLI and every other Python caller (SDK, MCP server).

Owns: HTTP/1.1 over the daemon's Unix socket (``http``), starting the daemon when none
answers (``launcher``) and the typed facade (``facade``: ``client.vms.create(...)``)
that builds URLs, quotes names, follows progress streams and rebuilds typed errors.
Must not: import click, rich, pydantic or ``banger.api``, or print anything; it stays
light because every CLI call imports it (docs/explanation/client.md).
"""
