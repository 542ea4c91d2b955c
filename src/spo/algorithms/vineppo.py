"""VinePPO (Kazemnejad et al. 2024): SPO-chain's ancestor, with Monte-Carlo values at every
reasoning step instead of at low-probability cutpoints.

    1. sample     G responses per prompt, and score them
    2. partition  a boundary after every `algorithm.step_delimiter` (a newline: one step per line)
    3. values     V at every step start = mean reward of K continuations from the exact
                  token prefix (K = `algorithm.mc_samples`, 9 in the reference); V(end) = r;
                  V(prompt) by MC too with `algorithm.start_value: mc` (the reference's)
    4. advantages every token of step k gets V(start of step k+1) - V(start of step k)
    5. mask       none by default (`algorithm.prob_mask: false`)

Everything but the partition rule is SPO-chain's (spo.algorithms.spo_chain).
"""

from __future__ import annotations

from spo.algorithms.registry import register_algorithm
from spo.algorithms.spo_chain import SPOChain


@register_algorithm("vineppo")
class VinePPO(SPOChain):
    partition_rule = "step"
