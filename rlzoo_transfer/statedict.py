"""One line for torch's ``load_state_dict`` errors, whose message spans a line per problem after a header line.

``Error(s) in loading state_dict for DERPolicy:`` alone says nothing of what does not fit; :func:`mismatch` says it
in one line: how many keys are missing and unexpected (the first two of each named) and the first size mismatch
with both shapes.  Every CLI that loads weights into a network it rebuilt (enjoy, train's ``--resume``) reports
such an error through it.
"""
from __future__ import annotations

import re

_KEYS = re.compile(r"^(Missing|Unexpected) key\(s\) in state_dict: (.*)$")
_SIZE = re.compile(r"^size mismatch for (\S+): copying a param with shape torch\.Size\(\[(.*?)\]\) from checkpoint, "
                   r"the shape in current model is torch\.Size\(\[(.*?)\]\)")


def first_line(err: BaseException) -> str:
    """The first non-empty line of ``err``'s message (its class name when the message is empty)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _names(found: list[str], what: str, shown: int = 2) -> str:
    """``3 missing keys (a, b, ...)``."""
    more = ", ..." if len(found) > shown else ""
    return f"{len(found)} {what} key{'s' if len(found) != 1 else ''} ({', '.join(found[:shown])}{more})"


def _shape(text: str) -> tuple[int, ...]:
    """``'4, 5'`` (inside ``torch.Size([...])``) -> ``(4, 5)``."""
    return tuple(int(n) for n in text.split(",") if n.strip())


def mismatch(err: BaseException) -> str:
    """One line for an error of ``module.load_state_dict(state)`` (or of an SB3 load, which calls it), e.g.
    ``3 missing keys (a, b, ...), 1 unexpected key (c); size mismatch for d: (204, 256) in the file, (918, 256) in
    the network (and 1 more)``; any other error's first line."""
    keys, sizes = [], []
    for line in str(err).splitlines():
        line = line.strip()
        if found := _KEYS.match(line):
            keys.append(_names(re.findall(r'"([^"]*)"', found.group(2)), found.group(1).lower()))
        elif found := _SIZE.match(line):
            sizes.append(found.groups())
    parts = [", ".join(keys)] if keys else []
    if sizes:
        name, given, expected = sizes[0]
        more = f" (and {len(sizes) - 1} more)" if len(sizes) > 1 else ""
        parts.append(f"size mismatch for {name}: {_shape(given)} in the file, {_shape(expected)} in the network{more}")
    return "; ".join(parts) or first_line(err)
