"""scripts/gpu_check.py cannot rot: its --dry-run runs here through every step that needs
neither CUDA nor vLLM (tests/test_vllm_engine.py runs the vLLM steps in `make test-vllm`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "gpu_check.py"
HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture()
def gpu_check(monkeypatch):
    import sys

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(HAVE_VLLM, reason="with vLLM the dry run is the vLLM test's (longer)")
def test_dry_run_passes_every_step_without_cuda_or_vllm(gpu_check, tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--json", str(tmp_path / "rows.json")]) == 0
    rows = {r["check"]: r for r in json.loads((tmp_path / "rows.json").read_text())}
    for check in ("plan: V1 model runner", "plan: launcher, 2 processes", "plan: batch-token limit",
                  "plan: stable compile-cache folder", "plan: old log-probs (auto)", "push: streamed peak (accounted)"):
        assert rows[check]["status"] == "ok", rows[check]
    assert rows["vLLM engine steps"]["status"] == "skip"
    assert "0 failed" in capsys.readouterr().out


def test_a_failed_assertion_exits_non_zero(gpu_check, monkeypatch, capsys):
    import spo.sample.vllm_args as vllm_args

    monkeypatch.setattr(vllm_args, "GPU_BATCHED_TOKENS", 1)
    monkeypatch.setattr(gpu_check, "engine_steps", lambda *a: None)  # only the plan matters here
    assert gpu_check.main(["--dry-run", "--no-smoke"]) == 1
    assert "1 failed: plan: batch-token limit" in capsys.readouterr().out


def test_without_a_gpu_it_asks_for_the_dry_run(gpu_check, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert gpu_check.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err
