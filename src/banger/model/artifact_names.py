"""The name rule of kernels and images: one path component a shell or CLI cannot misread.

Owns: the rule, its pydantic pattern and the check. Must not: do any I/O.
"""

from __future__ import annotations

import re

from banger.errors import InvalidArgument
from banger.model.units import describe_input

NAME_RULE = "1-64 letters, digits, '.', '-' or '_', starting with a letter or digit"
#: The same rule for the API schema (pydantic ``pattern``).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN, re.ASCII)


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def validate_name(name: object, *, kind: str = "kernel") -> str:
    """``name`` when it is a valid kernel (or image) name; ``InvalidArgument`` otherwise.

    One path component and nothing a shell or a CLI parser would misread: no ``/``,
    no leading ``.`` or ``-``, so ``..`` and ``.staging`` can never be names.
    """
    if not is_valid_name(name):
        raise InvalidArgument(
            f"invalid {kind} name {describe_input(name)}", hint=f"use {NAME_RULE}"
        )
    assert isinstance(name, str)
    return name
