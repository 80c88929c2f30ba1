"""Rows whose decision a change of one Linear layer's output cannot flip.

When the model above an edited Linear layer is a plain chain of Linear layers and 1-Lipschitz
elementwise functions (`ModelSplit.chain`), the change of the output logits is bounded by the change
of the layer's output times the chain's gain (a bound on each Linear layer's spectral norm). A row
whose kept margin exceeds that bound keeps its decision, and the dynamic loop's checks, which only
read decisions, need not run the rest of the model on it.
"""
from __future__ import annotations

import torch
from torch import nn

MAX_PAIRWISE_CLASSES = 512  # beyond this many classes the head's bound uses row norms, not pairwise distances


def spectral_bound(weight: torch.Tensor) -> float:
    """An upper bound on the largest singular value of `weight`: the smaller of its Frobenius norm and
    the square root of its largest column sum times its largest row sum (both cheap, both sound)."""
    w = weight.detach().flatten(1).abs().float()
    holder = float((w.sum(0).max().double() * w.sum(1).max().double()).sqrt())
    return min(float(w.norm()), holder) * (1 + 1e-3)  # float32 sums: a margin for their rounding


class ChainBound:
    """`unchanged(out, change, logits)`: which rows keep their decision when the edited layer's output
    `out` becomes `out + change`, given the model's logits before the change. `steps`: the chain above
    the layer, ending in the output Linear layer (`ModelSplit.chain`)."""

    @staticmethod
    def worth(steps: list) -> bool:
        """Whether rerunning the chain costs more per row than the bound reads (the layer's output and the
        head's scores): not above a small head alone, whose rerun is cheap."""
        linears = [s for s in steps if isinstance(s, nn.Linear)]
        return sum(s.in_features * s.out_features for s in linears) >= 16 * (
            linears[0].in_features + linears[-1].out_features)

    def __init__(self, steps: list):
        self.steps = steps
        first = next(i for i, s in enumerate(steps) if isinstance(s, nn.Linear))
        self.prefix = steps[:first]  # elementwise steps before the next Linear layer: applied exactly
        gain = 1.0
        for s in steps[first:-1]:
            if isinstance(s, nn.Linear):
                gain *= spectral_bound(s.weight)
        self.gain = gain
        w = steps[-1].weight.detach().double()
        if len(w) <= MAX_PAIRWISE_CLASSES:
            self.pairwise = torch.cdist(w, w)
        else:
            norms = w.norm(dim=1)
            self.pairwise = norms[:, None] + norms.max()

    @torch.no_grad()
    def unchanged(self, out: torch.Tensor, change: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """A boolean per row (None when the logits are not one row of scores per input)."""
        if logits.dim() != 2 or len(logits) != len(out):
            return None
        before, after = out, out + change
        for step in self.prefix:
            before, after = step(before), step(after)
        reach = (after - before).flatten(1).norm(dim=1).double() * self.gain  # bound on the head input's change
        z = logits.double()
        rows = torch.arange(len(z))
        top = z.argmax(1)
        margin = z[rows, top, None] - z
        tol = 1e-4 * (1 + z.abs().amax(1, keepdim=True))  # rounding of the rerun the row skips
        slack = margin - self.pairwise.to(z.device)[top] * reach[:, None] - tol
        slack[rows, top] = float("inf")
        return (slack > 0).all(1)
