"""Errors the user can act on. The CLI prints them as one line and exits 2; pages show them."""
from __future__ import annotations


class AuditorError(ValueError):
    """Bad input from the user (a file, a column, a requirement): the message says what to do."""


class UnsafeModelError(AuditorError):
    """A model file that could run code when loaded; it is refused, never opened."""
