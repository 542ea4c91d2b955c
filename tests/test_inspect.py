"""`spo inspect` and `spo plot`: the page's data (episodes, SPO-chain segments, SPO-tree
edges), the CLI, the local server, and the page itself in a headless Chromium on smoke runs
of GRPO, SPO-chain and SPO-tree (skipped without playwright or a chromium executable;
`make test` installs both)."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from spo.cli import main
from spo.config import ConfigError
from spo.evaluate.learning_curves import learning_curve, metric_curve
from spo.commands.inspect import add_inspect_commands
from spo.inspect.page import json_script
from spo.inspect.run_data import (
    TokenText,
    choose_iterations,
    edge_status,
    iteration_payload,
    rle,
)
from spo.inspect.serve import make_server
from spo.commands.plot import parse_metric, run_labels

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(os.environ.get("SPO_SCREENSHOTS_DIR") or Path(tempfile.gettempdir()) / "spo-inspect-screenshots")
"""Where the browser tests keep their screenshots to look at (not the working tree: tests
write only outside it)."""


def spo(*argv: str) -> int:
    """Run `spo inspect` / `spo plot` through a parser built with add_inspect_commands
    (as spo.cli will), the handler's return code."""
    parser = argparse.ArgumentParser(prog="spo")
    add_inspect_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def lines(run: Path, it: int) -> list[dict]:
    return [json.loads(x) for x in (run / "episodes" / f"iter_{it:06d}.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------- pure parts


def test_rle_and_iteration_choice():
    assert rle([0.5, 0.5, 0.5, -0.25, -0.25, 0.5]) == [[0.5, 3], [-0.25, 2], [0.5, 1]]
    assert rle([1, 1, 0, 1]) == [[1, 2], [0, 1], [1, 1]] and rle([]) == []
    assert choose_iterations([1, 2, 3], None) == [1, 2, 3]
    assert choose_iterations(list(range(1, 101)), None) == [1, 12, 23, 34, 45, 56, 67, 78, 89, 100]
    assert choose_iterations([1, 2, 3], ["3", "1"]) == [1, 3]
    assert choose_iterations([1, 2, 3], ["all"]) == [1, 2, 3]
    with pytest.raises(ConfigError, match=r"\[7\]"):
        choose_iterations([1, 2, 3], ["7"])


def _response(**kw):
    base = {"problem_index": 4, "group_id": 0, "prompt_ids": [1, 2], "response_ids": [5, 6, 7],
            "logprobs": [-0.1234, -2.0, -0.5], "finish_reason": "eos", "reward": 1.0,
            "advantages": [0.5, 0.5, -0.25], "loss_mask": [1, 0, 1], "response": "abc"}
    return {**base, **kw}


def test_episode_payload_shares_prompts_and_keeps_every_field():
    chain = _response(boundaries=[0, 2, 3], values=[0.5, 1.0, 1.0], value_samples=[4, 2, 0], cutpoints=[1])
    ppo = _response(group_id=1, prompt_ids=[1, 3], values=[0.1, 0.2, 0.3], returns=[1.0, 1.0, 1.0], note="x")
    d = iteration_payload(3, [chain, _response(), ppo], TokenText())
    assert d["prompts"] == [[1, 2], [1, 3]] and [e["prompt"] for e in d["episodes"]] == [0, 0, 1]
    c, _, p = d["episodes"]
    assert c["adv"] == [[0.5, 2], [-0.25, 1]] and c["mask"] == [[1, 1], [0, 1], [1, 1]]
    assert c["logprobs"] == [-0.123, -2.0, -0.5]
    assert (c["boundaries"], c["values"], c["value_samples"], c["cutpoints"]) == ([0, 2, 3], [0.5, 1.0, 1.0], [4, 2, 0], [1])
    assert "per_token" not in c  # SPO-chain's `values` are per boundary, not per token
    assert p["per_token"] == {"values": [0.1, 0.2, 0.3], "returns": [1.0, 1.0, 1.0]} and p["extra"] == {"note": "x"}
    assert d["tokens"] == {"1": "⟨1⟩", "2": "⟨2⟩", "3": "⟨3⟩", "5": "⟨5⟩", "6": "⟨6⟩", "7": "⟨7⟩"}


def _tree():
    nodes = [{"id": 0, "parent": None, "depth": 0, "token_ids": [], "logprobs": [], "leaf": False,
              "reward": None, "value": 0.5, "advantage": None}]
    for i, (value, adv) in enumerate([(1.0, 0.5), (0.0, -0.5), (0.5, 0.0)], start=1):
        nodes.append({"id": i, "parent": 0, "depth": 1, "token_ids": [10 + i], "logprobs": [-1.0], "leaf": True,
                      "finish_reason": "eos", "truncated": False, "reward": value, "value": value, "advantage": adv})
    edge = {"node": 1, "parent": 0, "depth": 1, "prompt_ids": [1, 2], "response_ids": [11], "logprobs": [-1.0],
            "advantages": [0.5], "loss_mask": [0], "reward": 1.0, "group_id": 0}
    return {"kind": "tree", "problem_index": 9, "group_id": 0, "prompt_ids": [1, 2], "nodes": nodes, "edges": [edge]}


def test_tree_payload_marks_trained_parked_dropped_and_later_replays():
    replayed = {**_tree()["edges"][0], "kind": "replayed_edge", "node": 2, "sampled_iteration": 1, "age": 1}
    d = iteration_payload(1, [_tree(), replayed], TokenText(), replays={(1, 0, 2): [2]})
    nodes = d["trees"][0]["nodes"]
    assert [n["status"] for n in nodes] == ["root", "trained", "parked", "dropped"]
    assert nodes[1]["mask"] == [[0, 1]] and "mask" not in nodes[2]  # the trained edge's own loss mask
    assert nodes[2]["replayed_in"] == [2] and "replayed_in" not in nodes[1]
    assert len(d["replayed"]) == 1 and d["episodes"] == []
    assert edge_status({"id": 3, "parent": 0, "advantage": 1e-12}, set()) == "dropped"


def test_json_in_the_page_cannot_close_its_script_element():
    text = json_script("x", {"t": "</script><script>alert(1)</script>"})
    assert text.count("</script>") == 1 and json.loads(text[text.index(">") + 1: -len("</script>")])["t"].startswith("</")


def test_plot_helpers():
    assert parse_metric("eval/pass@4") == ("eval", "pass@4") and parse_metric("kl") == ("train", "kl")
    assert parse_metric("train/kl") == ("train", "kl")
    assert run_labels([Path("/a/grpo/seed0"), Path("/a/rloo/seed0")]) == ["grpo/seed0", "rloo/seed0"]
    rows = [{"iteration": 1, "tokens_generated_total": 10, "samples_generated": 2, "time_total": 1.0, "kl": 0.5},
            {"iteration": 2, "tokens_generated_total": 30, "samples_generated": 2, "time_total": 1.0, "kl": None},
            {"kind": "eval", "iteration": 2, "accuracy": 0.25}]
    assert [(p.iteration, p.tokens, p.accuracy) for p in metric_curve(rows, "kl", "train")] == [(1, 10, 0.5)]
    assert [(p.iteration, p.tokens, p.accuracy) for p in learning_curve(rows)] == [(2, 40, 0.25)]


# ------------------------------------------------------------------------- smoke runs


def _train(tmp_path_factory, preset: str, *overrides: str) -> Path:
    out = tmp_path_factory.mktemp(preset)
    assert main(["train", "--config", preset, "--output-dir", str(out), "sampling.max_new_tokens=8",
                 "task.eval_limit=4", *overrides]) == 0
    return out


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    return _train(tmp_path_factory, "smoke")


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    return _train(tmp_path_factory, "smoke-spo-chain")


@pytest.fixture(scope="module")
def tree_run(tmp_path_factory):
    return _train(tmp_path_factory, "smoke-spo-tree")


def test_inspect_writes_one_self_contained_page(grpo_run, tmp_path):
    out = tmp_path / "page.html"
    assert spo("inspect", str(grpo_run), "--iteration", "2", "--out", str(out)) == 0
    text = out.read_text()
    assert 'id="spo-iter-2"' in text and 'id="spo-iter-1"' not in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched from anywhere
    assert spo("inspect", str(grpo_run)) == 0 and (grpo_run / "inspect.html").is_file()
    with pytest.raises(ConfigError, match="not a run folder"):
        spo("inspect", str(tmp_path))


def test_plot_draws_curves_of_several_runs(grpo_run, chain_run, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "c.png"
    assert spo("plot", str(grpo_run), str(chain_run), "--metric", "eval/accuracy", "reward_mean", "kl",
               "--x", "tokens", "--out", str(out)) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="no_such_metric"):
        spo("plot", str(grpo_run), "--metric", "no_such_metric", "--out", str(out))


@pytest.fixture(scope="module")
def server(chain_run):
    srv = make_server(chain_run, 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_serve_binds_loopback_and_reads_the_run_on_demand(server, chain_run):
    assert server.startswith("http://127.0.0.1:")
    index = json.load(urllib.request.urlopen(server + "/index.json"))
    assert index["mode"] == "serve" and index["available"] == [1, 2] and index["estimator"] == "spo_chain"
    it = json.load(urllib.request.urlopen(server + "/iteration/2.json"))
    assert len(it["episodes"]) == len(lines(chain_run, 2)) and it["episodes"][0]["boundaries"]
    assert b"spo-index" in urllib.request.urlopen(server + "/").read()
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(server + "/iteration/9.json")


# ------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("no chromium executable (make install-browser)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


def open_page(browser, url: str, shot: str):
    """The page at `url`, fully rendered, with a list its console errors go to."""
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=10_000)
    page.shot = shot
    return page, errors


def screenshot(page) -> None:
    """Keep a screenshot in SHOTS ($SPO_SCREENSHOTS_DIR, default $TMPDIR/spo-inspect-screenshots)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / page.shot))


def hover_tip(page, selector: str) -> str:
    page.locator(selector).first.hover()
    return page.inner_text("#tip")


def page_of(run: Path) -> str:
    out = run / "inspect.html"
    assert spo("inspect", str(run), "--out", str(out)) == 0
    return out.as_uri()


def test_grpo_page_in_a_browser(browser, grpo_run):
    page, errors = open_page(browser, page_of(grpo_run), "grpo.png")
    eps = lines(grpo_run, 2)  # the newest iteration is shown first
    assert page.locator("#list .episode").count() == len(eps) == 16
    assert f"{len(eps)} episodes" in page.inner_text("#summary")
    assert page.locator("#charts .chart").count() >= 6
    tip = hover_tip(page, "#list .episode .tokens .t")
    p = float(re.search(r"p = ([-\d.e+]+)", tip).group(1))
    assert p == pytest.approx(math.exp(eps[0]["logprobs"][0]), rel=2e-3)
    assert f"advantage = {'' if eps[0]['advantages'][0] >= 0 else '−'}" in tip
    screenshot(page)
    page.select_option("#iteration", "1")
    page.wait_for_function("document.querySelector('#summary').innerText.includes('Iteration 1')")
    page.select_option("#filter", "correct")
    correct = sum(e["reward"] == 1 for e in lines(grpo_run, 1))
    assert page.locator("#list .episode").count() == correct
    assert errors == []


def test_spo_chain_page_shows_segments_and_values(browser, chain_run):
    page, errors = open_page(browser, page_of(chain_run), "spo-chain.png")
    eps = lines(chain_run, 2)
    assert page.locator("#list .episode").count() == len(eps)
    first = page.locator("#list .episode").first
    assert first.locator(".bd").count() == len(eps[0]["boundaries"])  # V(t_0) .. V(t_K)
    assert first.locator(".t.cp").count() == len(eps[0]["cutpoints"])
    tip = hover_tip(page, "#list .episode .tokens .t")
    assert "advantage = " in tip and "segment 1 of" in tip and "V(start)" in tip and "p = " in tip
    if len(eps[0]["boundaries"]) > 2:
        assert "MC samples" in hover_tip(page, "#list .episode .bd:not(.start):not(.end)")
    screenshot(page)
    assert errors == []


def test_spo_tree_page_shows_each_tree_with_all_its_nodes(browser, tree_run):
    page, errors = open_page(browser, page_of(tree_run), "spo-tree.png")
    trees = [r for r in lines(tree_run, 2) if r["kind"] == "tree"]
    assert page.locator("#list .tree").count() == len(trees)
    first = page.locator("#list .tree").first
    assert first.locator(".tnode").count() == len(trees[0]["nodes"])
    assert f"{len(trees[0]['nodes'])} nodes" in first.locator(".ncount").inner_text()
    assert first.locator(".tnode .badge").count() == len(trees[0]["nodes"])  # the prompt's and each edge's
    tip = hover_tip(page, "#list .tree .tnode:not(.root) .tokens .t")
    assert "p = " in tip and "advantage = " in tip
    page.click("#collapse")
    assert page.locator("#list details.tnode[open]").count() == 0
    screenshot(page)
    assert errors == []


def test_served_page_loads_iterations_from_the_server(browser, server, chain_run):
    page, errors = open_page(browser, server + "/", "served.png")
    assert page.locator("#list .episode").count() == len(lines(chain_run, 2))
    page.select_option("#iteration", "1")
    page.wait_for_function("document.querySelector('#summary').innerText.includes('Iteration 1')")
    assert errors == []
