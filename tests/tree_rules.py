"""The SPO-tree rules an episode log must obey (shared by the unit and end-to-end tests)."""

from __future__ import annotations

import math
import statistics


def check_tree_record(tree: dict, branching: list[int], segment_length: int, max_new_tokens: int,
                      sibling_std: bool = False, truncated_scores_zero: bool = True) -> None:
    """Assert every rule of SPO-tree on one logged tree (see docs/algorithms.md)."""
    nodes = tree["nodes"]
    by_id = {n["id"]: n for n in nodes}
    children: dict[int, list[dict]] = {n["id"]: [] for n in nodes}
    for n in nodes[1:]:
        children[n["parent"]].append(n)
    used = {0: 0}
    for n in nodes[1:]:
        used[n["id"]] = used[n["parent"]] + len(n["token_ids"])
    for n in nodes:
        kids = children[n["id"]]
        depth = n["depth"]
        # branch counts never exceed the configured factors (equal them, for expanded nodes)
        if kids:
            assert len(kids) == branching[depth], (n["id"], len(kids))
            assert not n["leaf"]
        else:
            assert n["leaf"], f"node {n['id']} has no children but is not a leaf"
        if n["id"] == 0:
            continue
        assert depth == by_id[n["parent"]]["depth"] + 1
        assert len(n["logprobs"]) == len(n["token_ids"])
        # non-final segments have exactly M tokens unless they ended at EOS or the budget
        if depth < len(branching) and n["finish_reason"] != "eos" and used[n["id"]] < max_new_tokens:
            assert len(n["token_ids"]) == segment_length, (n["id"], len(n["token_ids"]))
        assert used[n["id"]] <= max_new_tokens
        if n["truncated"] and truncated_scores_zero:
            assert n["leaf"] and n["reward"] == 0.0
    for n in nodes:
        kids = children[n["id"]]
        if n["leaf"]:
            assert n["value"] == n["reward"]
        else:  # internal value = mean of the children's values
            assert n["reward"] is None
            assert math.isclose(n["value"], sum(k["value"] for k in kids) / len(kids), abs_tol=1e-9)
        if n["id"] == 0:
            assert n["advantage"] is None
            continue
        a = n["value"] - by_id[n["parent"]]["value"]
        if sibling_std:
            sib = [k["value"] for k in children[n["parent"]]]
            sd = statistics.stdev(sib) if len(sib) > 1 else 0.0
            a = a / (sd + 1e-6)
        assert math.isclose(n["advantage"], a, abs_tol=1e-6)


def check_edge(edge: dict, tree: dict | None = None) -> None:
    """An edge sample: nonzero advantage broadcast over its segment, context = prompt + parent prefix."""
    seg = edge  # the SPO-tree fields sit beside the pipeline's
    assert abs(seg["edge_advantage"]) >= 1e-9, "a zero-advantage edge was trained"
    assert len(seg["advantages"]) == len(edge["response_ids"])
    assert all(math.isclose(a, seg["edge_advantage"], rel_tol=1e-6, abs_tol=1e-7) for a in seg["advantages"])
    if tree is not None:
        nodes = {n["id"]: n for n in tree["nodes"]}
        node = nodes[seg["node"]]
        assert edge["response_ids"] == node["token_ids"] and edge["logprobs"] == node["logprobs"]
        prefix, p = [], nodes[node["parent"]]
        while p["parent"] is not None:
            prefix = p["token_ids"] + prefix
            p = nodes[p["parent"]]
        assert edge["prompt_ids"] == tree["prompt_ids"] + prefix  # exact token prefix
        assert seg["edge_advantage"] == node["advantage"]
