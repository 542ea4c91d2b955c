"""The reference-faithful GPU presets against the table of their sources.

`TABLE` below says, for every GSM8K/MATH preset that reproduces a run of the paper, which
value each option must have and which line of the authors' code (AIFrameResearch/SPO at
commit b9fc6a2) it comes from, with the text found on that line. The tests check that
1. every preset loads and has exactly these values (a later edit cannot drift silently);
2. docs/reproduce.md lists the same rows (same options, values, lines and texts), so the
   document and this test cannot disagree;
3. where a copy of the reference repository is at hand ($SPO_REFERENCE_REPO, default
   /work/.mirror/AIFrameResearch+SPO/repo), each cited line holds the quoted text
   (skipped elsewhere, e.g. in CI).

A deliberate difference from the reference still has its row (the reference text shows
the reference's value); docs/reproduce.md says why it differs.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from spo.config import load_config
from spo.config_io import to_dict
from spo.presets import PRESETS_DIR

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reproduce.md"
REFERENCE_COMMIT = "b9fc6a2"
REFERENCE_REPO = Path(os.environ.get("SPO_REFERENCE_REPO", "/work/.mirror/AIFrameResearch+SPO/repo"))

GSM8K_ALL = ("gsm8k-spo-chain", "gsm8k-spo-tree", "gsm8k-grpo", "gsm8k-rloo", "gsm8k-vineppo", "gsm8k-ppo")
GSM8K_64X8 = ("gsm8k-spo-chain", "gsm8k-grpo", "gsm8k-rloo", "gsm8k-vineppo", "gsm8k-ppo")
MATH_ALL = ("math-spo-tree", "math-grpo")

# reference files, shortened
RHO_PPO = "configs/polIter_rho1bSft2_ppo_MATH.jsonnet"
RHO_CHAIN_MATH = "configs/polIter_rho1bSft2_spo_chain_MATH.jsonnet"
RHO_CHAIN = "configs/polIter_rho1bSft2_spo_chain_GSM8K.jsonnet"
RHO_TREE = "configs/polIter_rho1bSft2_spo_tree_GSM8K.jsonnet"
PPO_TRAINER_CFG = "configs/trainers/ppo_MATH.jsonnet"
GSM8K_EVAL = "configs/sft_rho1b_for_gsm8k_eval.jsonnet"
QWEN_CHAIN = "configs/polIter_qwen1b_spo_chain_MATH.jsonnet"
QWEN_TREE = "configs/polIter_qwen1b_spo_tree_MATH.jsonnet"
QWEN_GRPO = "configs/polIter_qwen1b_grpo_MATH.jsonnet"
MC_GEN = "src/treetune/episode_generators/math_episode_generator_with_mc_advantages.py"
GROUP_GEN = "src/treetune/episode_generators/math_episode_generator_with_group_advantages.py"
HYBRID_GEN = "src/treetune/episode_generators/hybrid_episode_generator.py"
TREE_GEN = "src/treetune/episode_generators/tree_episode_generator.py"
PPO_TRAINER = "src/treetune/trainers/ppo_trainer.py"
RUNTIME = "src/treetune/runtime/policy_iteration_runtime.py"

# (presets, {dotted option: (value, "reference path:line", text on that line)})
TABLE: list[tuple[tuple[str, ...], dict[str, tuple[object, str, str]]]] = [
    (GSM8K_ALL, {
        "model.name_or_path": ("realtreetune/rho-1b-sft-GSM8K", f"{RHO_CHAIN}:1",
                               "local hf_model_name = 'realtreetune/rho-1b-sft-GSM8K';"),
        "model.dtype": ("bfloat16", f"{PPO_TRAINER_CFG}:82", "bf16: true,"),
        "model.gradient_checkpointing": (True, f"{PPO_TRAINER_CFG}:81", "gradient_checkpointing: true,"),
        "task.name": ("gsm8k", "configs/tasks/gsm8k_orig_format.jsonnet:2", "type: 'gsm8k',"),
        "task.options.answer_format": ("last_hash", "src/treetune/tasks/gsm8k.py:49", 'parts = text.split("####")'),
        "task.prompt_template": ("rho1b_sft", "configs/prompt_library/MATH_step_by_step_sft.jsonnet:2",
                                 "local tree_question_template = '[MATH_TASK] Problem:"),
        "task.eval_limit": (None, f"{GSM8K_EVAL}:65", "dataset_portion: 1,"),
        "sampling.prompts_with_replacement": (True, f"{RHO_PPO}:37", "dataset_sample_with_replacement: true,"),
        "sampling.max_new_tokens": (1024, f"{RHO_PPO}:68", "max_tokens: 1024,"),
        "sampling.max_context": (2048, f"{RHO_PPO}:74", "model_context_size: 2047,"),
        "sampling.temperature": (0.6, f"{RHO_PPO}:18", "local sampling_temperature = 0.6;"),
        "sampling.top_p": (0.9, f"{RHO_PPO}:67", "top_p: 0.9,"),
        "sampling.stop": (["\n\n\nProblem:"], f"{RHO_PPO}:69", "stop: '\"\\n\\n\\nProblem:\"',"),
        "algorithm.clip_eps": (0.2, f"{PPO_TRAINER_CFG}:60", "cliprange: 0.2,"),
        "algorithm.kl_coef": (1.0e-4, "configs/trainers/refKl0.0001.jsonnet:4", "init_kl_coef: 0.0001,"),
        "algorithm.kl_aggregation": ("sequence_sum", f"{PPO_TRAINER}:1131",
                                     "ref_kl_loss = self.kl_ctl.value * ref_kl.sum(dim=1).mean()"),
        "algorithm.whiten": ("global", f"{PPO_TRAINER_CFG}:64", "whiten_advantages: true,"),
        "algorithm.micro_batch_size": (8, f"{RHO_PPO}:119", "per_device_train_batch_size: 8,"),
        "optim.lr": (1.0e-6, f"{PPO_TRAINER_CFG}:72", "learning_rate: 1e-6,"),
        "optim.weight_decay": (0.0, f"{PPO_TRAINER_CFG}:73", "weight_decay: 0.00,"),
        "optim.warmup_ratio": (0.03, f"{PPO_TRAINER_CFG}:74", "warmup_ratio: 0.03,"),
        "optim.schedule": ("linear", "configs/deepspeed/lr_scheduler.jsonnet:2", "type: 'WarmupDecayLR',"),
        "optim.grad_clip": (1.0, f"{PPO_TRAINER_CFG}:76", "max_grad_norm: 1.0,"),
        "eval.samples": (16, f"{GSM8K_EVAL}:1", "local num_samples = 16;"),
        "eval.temperature": (0.35, f"{GSM8K_EVAL}:2", "local temperature = 0.35;"),
        "eval.top_p": (0.9, f"{GSM8K_EVAL}:24", "top_p: 0.9,"),
        "eval.max_new_tokens": (1024, f"{GSM8K_EVAL}:25", "max_tokens: 1024,"),
        "eval.every": (50, f"{RUNTIME}:61", "evaluate_every_n_iterations: int = 10,"),
        "seed": (42, "README.md:81", 'export APP_SEED="42"'),
    }),
    (GSM8K_64X8, {
        "sampling.prompts_per_iteration": (64, f"{RHO_PPO}:15",
                                           "num_episodes_per_iteration / num_rollouts_per_sample"),
        "sampling.group_size": (8, f"{RHO_PPO}:14", "local num_rollouts_per_sample = 8;"),
        "algorithm.epochs": (2, f"{PPO_TRAINER_CFG}:92", "num_epochs_per_iteration: 2,"),
        "algorithm.mini_batch_size": (64, f"{RHO_PPO}:118", "target_train_batch_size: 64,"),
    }),
    (("gsm8k-spo-chain",), {
        "algorithm.name": ("spo_chain", f"{RHO_CHAIN_MATH}:5", "type: 'math_episode_generator_w_mc_advantages',"),
        "algorithm.partition": ("cutpoint", f"{MC_GEN}:928", "cutpoints = cutpoints - 1"),
        "algorithm.rho": (0.9, f"{MC_GEN}:927", "cutpoints = np.where(response_probs < 0.9)[0]"),
        "algorithm.interval": (5, "configs/episode_generators/interval5.jsonnet:3", "cutpoint_interval: 5,"),
        "algorithm.mc_samples": (9, "configs/episode_generators/9rolls.jsonnet:4", "samples: 9,"),
        "algorithm.max_segments": (None, f"{MC_GEN}:962", "# if self.max_step_for_value_estimation is not None:"),
        "algorithm.start_value": ("group_mean", f"{MC_GEN}:928", "cutpoints = cutpoints - 1"),
        "algorithm.prob_mask": (True, f"{RHO_CHAIN_MATH}:35", "use_prob_mask: true,"),
        "iterations": (1000, f"{RHO_CHAIN}:3", "local total_num_iterations = 1000;"),
    }),
    (("gsm8k-grpo",), {
        "algorithm.name": ("grpo", "configs/polIter_rho1bSft2_grpo_GSM8K.jsonnet:5", "adv_method: 'grpo',"),
        "algorithm.scale_by_std": (True, f"{GROUP_GEN}:277", "advantages = (scores - mean) / (std + 1e-8)"),
        "algorithm.prob_mask": (False, "configs/polIter_rho1bSft2_grpo_GSM8K.jsonnet:9", "use_prob_mask: false,"),
        "iterations": (1000, f"{RHO_CHAIN}:3", "local total_num_iterations = 1000;"),
    }),
    (("gsm8k-rloo",), {
        "algorithm.name": ("rloo", "configs/polIter_rho1bSft2_rloo_GSM8K.jsonnet:10", "adv_method: 'rloo',"),
        "algorithm.prob_mask": (False, "configs/polIter_rho1bSft2_rloo_GSM8K.jsonnet:26", "use_prob_mask: false,"),
        "iterations": (650, "configs/polIter_rho1bSft2_rloo_GSM8K.jsonnet:3", "local total_num_iterations = 650;"),
    }),
    (("gsm8k-vineppo",), {
        "algorithm.name": ("vineppo", "configs/polIter_rho1bSft2_vineppo_GSM8K.jsonnet:4",
                                "type: 'vineppo_episode_generator',"),
        "algorithm.step_delimiter": ("\n", "src/treetune/tasks/gsm8k.py:32",
                                     'intermediate_step_delimiter: Optional[str] = "\\n",'),
        "algorithm.mc_samples": (9, f"{RHO_CHAIN_MATH}:13", "samples: 9,"),
        "algorithm.start_value": ("mc", "src/treetune/episode_generators/vineppo_episode_generator.py:677",
                                  "# Add the query state"),
        "algorithm.max_segments": (26, f"{RHO_CHAIN}:14", "max_step_for_value_estimation: 25,"),
        "algorithm.prob_mask": (False, "configs/polIter_rho1bSft2_vineppo_GSM8K.jsonnet:8", "use_prob_mask: false,"),
        "iterations": (1000, f"{RHO_CHAIN}:3", "local total_num_iterations = 1000;"),
    }),
    (("gsm8k-ppo",), {
        "algorithm.name": ("ppo", f"{PPO_TRAINER_CFG}:24", "type: 'pretrained_causal_lm_with_value_head',"),
        "algorithm.prob_mask": (True, f"{PPO_TRAINER}:133", "use_prob_mask: bool = True"),
        "critic.lr": (1.0e-6, f"{PPO_TRAINER}:2395", "optimizer = self.create_optimizer(critic_model, weight_decay)"),
        "critic.grad_clip": (1.0, f"{PPO_TRAINER_CFG}:76", "max_grad_norm: 1.0,"),
        "critic.value_clip": (0.2, f"{PPO_TRAINER_CFG}:61", "cliprange_value: 0.2,"),
        "critic.gamma": (1.0, f"{PPO_TRAINER_CFG}:57", "gamma: 1.0,"),
        "critic.lam": (1.0, "configs/trainers/lam1.jsonnet:4", "lam: 1,"),
        "iterations": (650, "configs/polIter_rho1bSft2_ppo_GSM8K.jsonnet:3", "local total_num_iterations = 650;"),
    }),
    (("gsm8k-spo-tree",), {
        "algorithm.name": ("spo_tree", f"{RHO_TREE}:8", "type: 'hybrid_episode_generator',"),
        "sampling.prompts_per_iteration": (16, f"{RHO_TREE}:3", "local num_dataset_samples_per_iteration = 16;"),
        "algorithm.tree_branching": ([6, 6, 6], f"{RHO_TREE}:17", "{ depth: 0, branch_factor: 6 },"),
        "algorithm.segment_length": (30, f"{RHO_TREE}:12", "M: 30,"),
        "algorithm.sibling_std": (False, f"{TREE_GEN}:137", "advantage = child_reward - parent_reward"),
        "algorithm.max_edges_per_prompt": (32, f"{HYBRID_GEN}:54", "if len(edge_list) > 32:"),
        "algorithm.replay_max_age": (8, f"{HYBRID_GEN}:40", "if iteration - edge['iteration'] >= 8:"),
        "algorithm.replay_draw": ("uniform", f"{HYBRID_GEN}:55", "sampled_edges.extend(random.sample(edge_list, 32))"),
        "algorithm.tree_episodes": (1024, f"{RHO_TREE}:1", "local num_episodes_per_iteration = 1024;"),
        "algorithm.rho": (0.9, f"{PPO_TRAINER}:1058", "prob_mask = torch.exp(old_logprobs) < 0.9"),
        "algorithm.prob_mask": (True, f"{RHO_CHAIN_MATH}:35", "use_prob_mask: true,"),
        "algorithm.epochs": (1, f"{RHO_TREE}:26", "num_epochs_per_iteration: 1,"),
        "algorithm.mini_batch_size": (128, f"{RHO_TREE}:28", "target_train_batch_size: 128,"),
        "iterations": (1000, f"{RHO_CHAIN}:3", "local total_num_iterations = 1000;"),
    }),
    (MATH_ALL, {
        "model.name_or_path": ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", f"{QWEN_CHAIN}:1",
                               "local hf_model_name = 'deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B';"),
        "model.dtype": ("bfloat16", f"{PPO_TRAINER_CFG}:82", "bf16: true,"),
        "model.gradient_checkpointing": (True, f"{PPO_TRAINER_CFG}:81", "gradient_checkpointing: true,"),
        "task.name": ("math500", "configs/tasks/math.jsonnet:2", "type: 'math',"),
        "task.options.answer_format": ("boxed", "configs/prompt_library/qwen_MATH.jsonnet:2", "\\\\boxed{{ANSWER}}"),
        "task.prompt_template": ("qwen_math", "configs/prompt_library/qwen_MATH.jsonnet:2",
                                 "Solve the following math problem efficiently and clearly."),
        "task.max_question_tokens": (200, f"{QWEN_CHAIN}:49", "max_question_length: 200,"),
        "task.eval_limit": (None, "configs/qwen1b_for_MATH_eval.jsonnet:63", "dataset_portion: 1,"),
        "sampling.prompts_with_replacement": (True, f"{QWEN_CHAIN}:59", "dataset_sample_with_replacement: true,"),
        "sampling.max_new_tokens": (4096, f"{QWEN_CHAIN}:81", "max_tokens: 4096,"),
        "sampling.max_context": (2048, f"{QWEN_CHAIN}:88", "model_context_size: 2048,"),
        "sampling.temperature": (0.6, f"{QWEN_CHAIN}:12", "local sampling_temperature = 0.6;"),
        "sampling.top_p": (1.0, f"{QWEN_CHAIN}:80", "top_p: 1,"),
        "sampling.stop": (["\n\n\nProblem:"], f"{QWEN_CHAIN}:82", "stop: '\"\\n\\n\\nProblem:\"',  // not used"),
        "algorithm.clip_eps": (0.2, f"{PPO_TRAINER_CFG}:60", "cliprange: 0.2,"),
        "algorithm.kl_coef": (1.0e-4, f"{QWEN_CHAIN}:175", "+ (import 'trainers/refKl0.0001.jsonnet')"),
        "algorithm.kl_aggregation": ("sequence_sum", f"{PPO_TRAINER}:1131",
                                     "ref_kl_loss = self.kl_ctl.value * ref_kl.sum(dim=1).mean()"),
        "algorithm.whiten": ("global", f"{PPO_TRAINER_CFG}:64", "whiten_advantages: true,"),
        "algorithm.epochs": (1, f"{QWEN_CHAIN}:146", "num_epochs_per_iteration: 1,"),
        "algorithm.mini_batch_size": (128, f"{QWEN_CHAIN}:163", "target_train_batch_size: 128,"),
        "algorithm.micro_batch_size": (2, f"{QWEN_CHAIN}:164", "per_device_train_batch_size: 2,"),
        "optim.lr": (1.0e-6, f"{PPO_TRAINER_CFG}:72", "learning_rate: 1e-6,"),
        "optim.weight_decay": (0.0, f"{PPO_TRAINER_CFG}:73", "weight_decay: 0.00,"),
        "optim.warmup_ratio": (0.03, f"{PPO_TRAINER_CFG}:74", "warmup_ratio: 0.03,"),
        "optim.schedule": ("linear", "configs/deepspeed/lr_scheduler.jsonnet:2", "type: 'WarmupDecayLR',"),
        "optim.grad_clip": (1.0, f"{PPO_TRAINER_CFG}:76", "max_grad_norm: 1.0,"),
        "eval.samples": (1, "configs/qwen1b_for_MATH_eval.jsonnet:1", "local num_samples = 1;"),
        "eval.temperature": (0.6, "scripts/evaluate_long_cot.sh:15", "temperature:0.6,top_p:0.95"),
        "eval.top_p": (0.95, "scripts/evaluate_long_cot.sh:15", "temperature:0.6,top_p:0.95"),
        "eval.every": (10, f"{RUNTIME}:61", "evaluate_every_n_iterations: int = 10,"),
        "iterations": (1000, f"{QWEN_CHAIN}:10", "local total_num_iterations = 1000;"),
        "seed": (42, "README.md:113", 'export APP_SEED="42"'),
    }),
    (("math-spo-tree",), {
        "algorithm.name": ("spo_tree", f"{QWEN_TREE}:9", "type: 'hybrid_episode_generator',"),
        "sampling.prompts_per_iteration": (32, f"{QWEN_TREE}:3", "local num_dataset_samples_per_iteration = 32;"),
        "algorithm.tree_branching": ([6, 6, 6], f"{QWEN_TREE}:20", "{ depth: 0, branch_factor: 6 },"),
        "algorithm.segment_length": (600, f"{QWEN_TREE}:15", "M: 600,"),
        "algorithm.sibling_std": (False, f"{TREE_GEN}:137", "advantage = child_reward - parent_reward"),
        "algorithm.max_edges_per_prompt": (32, f"{HYBRID_GEN}:54", "if len(edge_list) > 32:"),
        "algorithm.replay_max_age": (8, f"{HYBRID_GEN}:40", "if iteration - edge['iteration'] >= 8:"),
        "algorithm.replay_draw": ("uniform", f"{HYBRID_GEN}:55", "sampled_edges.extend(random.sample(edge_list, 32))"),
        "algorithm.tree_episodes": (512, f"{QWEN_TREE}:1", "local num_episodes_per_iteration = 512;"),
        "algorithm.rho": (0.9, f"{PPO_TRAINER}:1058", "prob_mask = torch.exp(old_logprobs) < 0.9"),
        "algorithm.prob_mask": (True, f"{QWEN_CHAIN}:143", "use_prob_mask: true,"),
    }),
    (("math-grpo",), {
        "algorithm.name": ("grpo", f"{QWEN_GRPO}:11", "adv_method: 'grpo',"),
        "algorithm.scale_by_std": (True, f"{GROUP_GEN}:277", "advantages = (scores - mean) / (std + 1e-8)"),
        "sampling.prompts_per_iteration": (64, f"{QWEN_GRPO}:3",
                                           "num_episodes_per_iteration / num_rollouts_per_sample"),
        "sampling.group_size": (8, f"{QWEN_GRPO}:2", "local num_rollouts_per_sample = 8;"),
        "algorithm.prob_mask": (False, f"{QWEN_GRPO}:21", "use_prob_mask: false,"),
    }),
]

PRESETS = sorted({p for presets, _ in TABLE for p in presets})


def expected_rows(preset: str) -> dict[str, tuple[object, str, str]]:
    """Every row that applies to `preset` (an option is listed at most once per preset)."""
    rows: dict[str, tuple[object, str, str]] = {}
    for presets, group in TABLE:
        if preset in presets:
            twice = rows.keys() & group.keys()
            assert not twice, f"{preset}: {sorted(twice)} listed twice in TABLE"
            rows.update(group)
    return rows


def lookup(data: dict, dotted: str) -> object:
    node: object = data
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"no option {dotted}"
        node = node[part]
    return node


def test_table_covers_the_papers_runs():
    assert PRESETS == sorted(GSM8K_ALL + MATH_ALL)
    for preset in PRESETS:
        assert (PRESETS_DIR / f"{preset}.yaml").is_file(), preset
        expected_rows(preset)  # no option twice


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_matches_reference_table(preset):
    cfg = to_dict(load_config(PRESETS_DIR / f"{preset}.yaml"))
    drift = {}
    for option, (value, _, _) in expected_rows(preset).items():
        got = lookup(cfg, option)
        if got != value or type(got) is not type(value) and not (isinstance(value, float) and isinstance(got, int)):
            drift[option] = (got, value)
    assert not drift, f"{preset} drifted from docs/reproduce.md (got, table): {drift}"


# ---- the document's tables ------------------------------------------------------------

MARKER = re.compile(r"<!--\s*reference-table:\s*([^>]*?)\s*-->")


def _code(cell: str) -> str:
    cell = cell.strip()
    assert len(cell) >= 2 and cell[0] == cell[-1] == "`", f"expected a `code` cell, got {cell!r}"
    return cell[1:-1]


def doc_tables() -> list[tuple[tuple[str, ...], dict[str, tuple[object, str, str]]]]:
    """The tables of docs/reproduce.md that follow a `<!-- reference-table: presets -->`
    marker: rows `| `option` | `value (YAML)` | `path:line` | `text` | note |`."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    tables = []
    i = 0
    while i < len(lines):
        m = MARKER.search(lines[i])
        i += 1
        if not m:
            continue
        presets = tuple(m.group(1).split())
        while i < len(lines) and not lines[i].startswith("|"):
            i += 1
        rows: dict[str, tuple[object, str, str]] = {}
        header = True
        while i < len(lines) and lines[i].startswith("|"):
            line = lines[i]
            i += 1
            if header or set(line) <= set("|-: "):
                header = False
                continue
            cells = line.strip().strip("|").split(" | ")
            assert len(cells) >= 4, f"docs/reproduce.md: short row {line!r}"
            option = _code(cells[0])
            assert option not in rows, f"docs/reproduce.md: {option} twice in one table"
            rows[option] = (yaml.safe_load(_code(cells[1])), _code(cells[2]), _code(cells[3]))
        tables.append((presets, rows))
    return tables


def test_doc_lists_the_same_values():
    assert DOC.is_file()
    doc = doc_tables()
    assert [presets for presets, _ in doc] == [presets for presets, _ in TABLE], "tables or their presets differ"
    for (presets, want), (_, got) in zip(TABLE, doc):
        assert list(got) == list(want), f"{presets}: rows differ (order included)"
        for option in want:
            assert got[option] == want[option], f"{presets} {option}: doc {got[option]} != test {want[option]}"


def test_doc_names_a_command_for_every_preset():
    text = DOC.read_text(encoding="utf-8")
    for preset in PRESETS:
        assert f"--config {preset}" in text, f"docs/reproduce.md gives no command for {preset}"


# ---- the cited lines, where the reference repository is at hand --------------------------

def _reference_file(path: str) -> list[str] | None:
    try:
        out = subprocess.run(["git", "-C", str(REFERENCE_REPO), "show", f"{REFERENCE_COMMIT}:{path}"],
                             capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.decode("utf-8").splitlines()


@pytest.mark.skipif(not (REFERENCE_REPO / "HEAD").exists(), reason="no copy of the reference repository")
def test_cited_lines_hold_the_quoted_text():
    cache: dict[str, list[str] | None] = {}
    wrong = []
    for presets, group in TABLE:
        for option, (_, cite, text) in group.items():
            path, line = cite.rsplit(":", 1)
            if path not in cache:
                cache[path] = _reference_file(path)
            lines = cache[path]
            if lines is None or not (1 <= int(line) <= len(lines)) or text not in lines[int(line) - 1]:
                wrong.append((presets[0], option, cite, text))
    assert not wrong, f"cited lines that do not hold the quoted text: {wrong}"
