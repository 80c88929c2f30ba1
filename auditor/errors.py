"""Errors the user can act on. The CLI prints them as one line and exits 2; pages show them."""
from __future__ import annotations


class AuditorError(ValueError):
    """Bad input from the user (a file, a column, a requirement): the message says what to do."""


class UnsafeModelError(AuditorError):
    """A model file that could run code when loaded; it is refused, never opened."""


# Control characters (C0, DEL, C1: ANSI escape sequences start with ESC or CSI) and the bidirectional
# overrides that reorder text on screen: shown escaped, so a value cannot recolour, move the cursor,
# clear or hide the lines a terminal shows (a requirement's verdict among them).
_INERT = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}
_INERT.update({c: f"\\u{c:04x}" for c in (*range(0x202a, 0x202f), *range(0x2066, 0x206a), 0x200e, 0x200f, 0x061c)})
MAX_MESSAGE = 1600  # characters of an error message shown: the tool's longest advice fits, a 50 MB cell does not


def inert(text: object) -> str:
    """`text` with control characters and bidi overrides escaped (`\\x1b`): safe to print to a terminal."""
    return str(text).translate(_INERT)


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """`text` on one line of at most about `limit` characters (its start and its end, which often
    names the column or file), control characters escaped: how an error is shown, whatever its size."""
    raw = str(text)
    flat = lambda t: inert(" ".join(t.split()))
    s = flat(raw[:4 * limit])
    if len(s) <= limit and len(raw) <= 4 * limit:
        return s
    tail = flat(raw[-limit // 4:])[-limit // 4:]
    return f"{s[:limit - len(tail) - 40]} ...({len(raw):,} characters)... {tail}"


def channels_last_hint(expected, got) -> str:
    """"; these look like images stored channels last ..." when `got` is `expected` (C, H, W) as (H, W, C),
    or, with `expected` unknown (None), when `got` ends in a channel count (1, 3 or 4); else ""."""
    got = list(got or [])
    if expected is None and len(got) == 3 and got[-1] in (1, 3, 4) and got[0] not in (1, 3, 4):
        expected = [got[2], got[0], got[1]]
    expected = list(expected or [])
    if len(expected) == 3 and got == [expected[1], expected[2], expected[0]] and expected != got:
        return ("; these look like images stored channels last (N, H, W, C): store them as (N, C, H, W), e.g. "
                "np.transpose(images, (0, 3, 1, 2)) (and the mask and pattern as (C, H, W)); the auditor never "
                "reorders them itself")
    return ""
