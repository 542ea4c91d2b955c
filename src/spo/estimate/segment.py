"""Segment-level advantages (SPO, section 2).

SPO-chain: a response is cut at boundaries 0 = t_0 < ... < t_K = T, each boundary's
value V(t_k) is estimated by Monte Carlo from the policy itself (done by the caller, see
`spo.estimate.chain_values`), V(t_K) = r(x, y), and every token of segment k carries

    A_k = V(t_k) - V(t_{k-1}).

The sum of segment advantages telescopes to r - V(t_0): SPO-chain with one segment is
REINFORCE with the prompt's value as baseline.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spo.estimate.registry import EstimatorInputs, register_estimator

__all__ = ["segment_advantages", "spo_chain"]


def segment_advantages(boundaries: list[int], values: Tensor | list[float]) -> list[float]:
    """Per-token advantages of one response: token t in segment k gets V(t_k) - V(t_{k-1})."""
    v = [float(x) for x in values]
    if len(v) != len(boundaries):
        raise ValueError(f"{len(boundaries)} boundaries but {len(v)} values")
    out: list[float] = []
    for k in range(1, len(boundaries)):
        out.extend([v[k] - v[k - 1]] * (boundaries[k] - boundaries[k - 1]))
    return out


@register_estimator("spo_chain")
def spo_chain(inputs: EstimatorInputs) -> Tensor:
    """SPO-chain token advantages [B, T] from `inputs.boundaries` and `inputs.values`."""
    if inputs.boundaries is None or inputs.values is None:
        raise ValueError("spo_chain needs boundaries and values (estimated by spo.estimate.chain_values)")
    mask = inputs.response_mask
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for i, (b, v) in enumerate(zip(inputs.boundaries, inputs.values)):
        n = int(mask[i].sum())
        if b[-1] != n:
            raise ValueError(f"sample {i}: last boundary {b[-1]} != response length {n}")
        if n:
            out[i, :n] = torch.tensor(segment_advantages(b, v), dtype=torch.float32, device=mask.device)
    return out
