"""Names users type (collections, aliases, regions): one pattern each, shared by CLI, operators, DAGs.

Why one module without heavy imports: the DAG trigger forms, the operators (parsed by the scheduler),
the CLI and the embedded store must accept exactly the same names, so a name that passes one check can
never fail later in another (``..`` used to pass the CLI and then end in a traceback in the store).
"""

from __future__ import annotations

import re

#: Collection and alias names: one safe path segment and URL segment on every engine.
COLLECTION_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
#: What a store engine accepts as a folder name: wider than the user pattern (internal names such as a
#: sentence cache derived from a long model name, and collections made before the pattern), but never
#: a path (no '/', no leading dot, so no '.' or '..').
STORE_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}$"
#: Region names; the operators get them comma-joined, so no commas.
REGION_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"


def check_collection_name(name: object, what: str = "collection") -> str:
    """``name`` when it is a valid collection (or alias) name, else a ValueError that says the rule."""
    if not isinstance(name, str) or not re.fullmatch(COLLECTION_PATTERN, name):
        raise ValueError(
            f"{what} name {name!r} is not allowed: use 1-128 letters, digits, '_' or '-' "
            f"(pattern {COLLECTION_PATTERN})"
        )
    return name


def check_store_name(name: object) -> str:
    """``name`` when it is safe as one folder name inside a store, else a ValueError."""
    if not isinstance(name, str) or not re.fullmatch(STORE_NAME_PATTERN, name):
        raise ValueError(f"collection name {name!r} is not allowed in a store (pattern {STORE_NAME_PATTERN})")
    return name


def check_region_name(name: object) -> str:
    """``name`` when it is a valid region name, else a ValueError that says the rule."""
    if not isinstance(name, str) or not re.fullmatch(REGION_PATTERN, name):
        raise ValueError(
            f"region {name!r} is not allowed: use 1-32 letters, digits, '_' or '-' (pattern {REGION_PATTERN})"
        )
    return name
