"""``banger mcp``: an MCP server over stdio giving coding agents banger sandboxes (SPEC §11).

Modules: ``tool_schemas`` (the ten tools and their small JSON schemas, stdlib only),
``tool_calls`` (what each does, on ``banger.sdk``; capped outputs; errors as ``{code,
message, hint}``; the session's ephemeral sandboxes) and ``stdio_main`` (the MCP
library's server, its lifetime and signals). Needs the optional extra ``banger[mcp]``;
only ``stdio_main`` imports it. Must not: import ``banger.cli`` (the CLI imports this).
"""
