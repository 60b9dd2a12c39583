"""banger: disposable Linux development VMs (CLI ``banger``, daemon ``bangerd``).

``from banger import Sandbox, AsyncSandbox`` is the Python SDK (docs/sdk.md). It loads on
first use (PEP 562 ``__getattr__``), so ``import banger`` — which every CLI call does —
stays as cheap as before (docs/explanation/cli-startup.md).
"""

from __future__ import annotations

# Not ``typing.TYPE_CHECKING``: importing typing (and re) costs every CLI call ~5 ms, and
# the fast ``vm exec`` imports nothing else of banger (docs/explanation/cli-startup.md).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from banger.sdk import AsyncSandbox, CommandResult, Sandbox

__all__ = ["AsyncSandbox", "CommandResult", "Sandbox"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        import banger.sdk

        return getattr(banger.sdk, name)
    raise AttributeError(f"module 'banger' has no attribute {name!r}")
