"""``banger-helper``: the narrow root helper of the owner daemon (SPEC §9, ADVERSARIAL 127).

``helper_config`` (root's policy), ``listen`` (the socket), ``connections`` (SO_PEERCRED,
one bounded request per connection), ``verbs`` (per-verb checks, then ``InProcessPrivilegedOps``),
``main`` (the command line). Imports only ``banger.errors``, ``banger.model``,
``banger.host`` and ``banger.net``: stdlib plus pyroute2, nothing of the daemon's stack.
"""
