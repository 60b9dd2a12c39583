"""VM names: the rule they follow and the generated adjective-noun names.

Owns: validation with an explicit ASCII rule (a VM name becomes a DNS label
`<name>.vm`, a hostname and part of paths, ADVERSARIAL 46) and name generation.
Must not: look anything up; callers pass the names already taken.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Container

from banger.errors import InvalidArgument

NAME_RULE = (
    "1-63 characters: lowercase ASCII letters, digits and '-', starting and ending "
    "with a letter or digit"
)
_NAME_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

ADJECTIVES = (
    "brisk",
    "calm",
    "clever",
    "cosy",
    "crisp",
    "daring",
    "eager",
    "fancy",
    "gentle",
    "glad",
    "jolly",
    "keen",
    "lively",
    "lucky",
    "merry",
    "nimble",
    "plucky",
    "proud",
    "quick",
    "quiet",
    "rapid",
    "shiny",
    "snappy",
    "steady",
    "sunny",
    "swift",
    "tidy",
    "witty",
    "zesty",
    "bold",
)
NOUNS = (
    "badger",
    "beacon",
    "comet",
    "falcon",
    "ferret",
    "gecko",
    "heron",
    "ibis",
    "koala",
    "lemur",
    "lynx",
    "marten",
    "meerkat",
    "narwhal",
    "ocelot",
    "otter",
    "panda",
    "pika",
    "puffin",
    "quokka",
    "raven",
    "robin",
    "seal",
    "shrew",
    "sloth",
    "stoat",
    "tapir",
    "walrus",
    "wombat",
    "yak",
)


def validate_vm_name(name: str) -> str:
    # fullmatch on an ASCII-only class: str.isalnum() would let 'ß' or Arabic digits through.
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid VM name {name!r}: must be {NAME_RULE}",
            hint="for example: dev, api-test-2",
        )
    return name


def generate_name(taken: Container[str], *, attempts: int = 200) -> str:
    for _ in range(attempts):
        name = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}"
        if name not in taken:
            return name
    for _ in range(attempts):
        name = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}-{secrets.randbelow(10000)}"
        if name not in taken:
            return name
    raise InvalidArgument("could not generate a free VM name", hint="pass --name")
