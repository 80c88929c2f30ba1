"""`auditor editor train --task adult --requirement demographic_parity`: train a learned editor."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("editor", help="train learned (metanetwork) editors on a population")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
