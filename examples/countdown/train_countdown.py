"""Train on countdown puzzles with SPO-chain from Python (docs/own-task.md).

    python examples/countdown/train_countdown.py                  # the tiny random model: minutes on a CPU
    python examples/countdown/train_countdown.py --model smollm2-135m-instruct --iterations 50

The default model is a 2-layer random Llama with SmolLM2's tokenizer: it shows the whole
pipeline (data, prompt, reward in a worker process, SPO-chain's segment values, evaluation)
in minutes on a CPU, but it cannot learn the puzzle; a real model (`--model`) may
(not measured here).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import spo

HERE = Path(__file__).resolve().parent
TINY_MODEL = {"model.random_init": True,
              "model.config_overrides": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                         "num_attention_heads": 4, "num_key_value_heads": 2}}


def countdown_config(model: str = "tiny", iterations: int = 4, max_new_tokens: int = 24) -> spo.RunConfig:
    """SPO-chain (cutpoint segments, MC values) on the countdown puzzles in puzzles.jsonl."""
    overrides = {
        "task.name": "dataset",
        "task.options": {
            "path": str(HERE / "puzzles.jsonl"),
            "prompt": "Using the numbers {numbers} once each, with + - * / and parentheses, make {target}.",
            "instruction": "Write the expression on the last line after '####', for example: #### (1 + 2) * 8",
            "eval_size": 20,
        },
        "task.eval_limit": 8,
        "iterations": iterations,
        "sampling.max_new_tokens": max_new_tokens,
        "algorithm.mc_samples": 2,
        "progress": False,
    }
    if model == "tiny":
        overrides.update(TINY_MODEL)
    else:
        overrides.update({"model.name_or_path": model, "model.random_init": False, "model.config_overrides": {}})
    return spo.make_config("smoke-spo-chain", overrides)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="SPO-chain on countdown puzzles")
    parser.add_argument("--model", default="tiny", help="'tiny' (random, 2 layers) or a model name/folder")
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    cfg = countdown_config(args.model, args.iterations)
    # The reward is a plain Python function; it runs in a worker process with a time limit
    # and a memory cap (task.options.reward_isolation / reward_timeout_s / reward_memory_mb).
    from countdown import reward

    run_dir = spo.train(cfg, reward=reward, output_dir=args.output_dir)
    print(f"run folder: {run_dir}")
    return run_dir


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))  # `countdown` is the module beside this script
    main()
