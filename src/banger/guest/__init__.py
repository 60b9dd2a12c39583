"""The guest agent and its host side.

``banger_agent.py`` is the agent itself: one stdlib-only file copied into images as
``/usr/local/lib/banger/banger-agent`` and run by ``python3`` in the guest (never imported
by the daemon at run time). ``agent_client`` is the host side (bounded HTTP/1.1 over the
VM's agent channel), ``ports`` formats ``vm ports``. ``banger.vmm.channels`` says how a
backend exposes the channel. docs/explanation/guest-agent.md describes the whole.
"""
