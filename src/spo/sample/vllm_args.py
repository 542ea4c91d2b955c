"""What spo hands vLLM to build its engine, worked out without importing vLLM, so that the
choices that only matter on GPUs are checked by tests on any machine (and by
``scripts/gpu_check.py --dry-run``). docs/vllm.md explains each one.

* **The V1 model runner** (``VLLM_USE_V2_MODEL_RUNNER=0``). vLLM 0.32 picks its V2 model
  runner whenever triton is importable (CUDA builds of torch ship it), and V2 loads only
  subclasses of its own ``LogitsProcessor``: it refuses spo's log-normaliser recorder (a V1
  processor) with a ValueError at start-up. The CPU build has no triton and runs V1 anyway.
* **One engine per process, on that process's GPU.** Under ``accelerate launch`` /
  ``torchrun`` with several processes, every engine uses vLLM's ``external_launcher``
  executor with the process's RANK / LOCAL_RANK / WORLD_SIZE (TRL's colocate mode): the
  default executor takes device index 0 from a bare ``cuda`` device, so every process's
  engine would land on GPU 0. Each process also gets its own engine seed (its rank).
  :func:`check_engine_device` then asserts the engine sits where the policy does.
* **A stable model folder** (the config only; weights are pushed): vLLM's compile cache is
  keyed on the model path among other things, so a fresh temporary folder per run would
  recompile at every start.
* **The batch-token limit** on GPUs is set (16384, or the context limit when longer) rather
  than left to vLLM's per-device default.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GPU_BATCHED_TOKENS", "RUNNER_ENV", "Placement", "check_engine_device", "engine_args",
           "model_folder", "placement"]

# set before vLLM builds an engine (see the module's docstring)
RUNNER_ENV = {"VLLM_USE_V2_MODEL_RUNNER": "0"}
GPU_BATCHED_TOKENS = 16384
DEFAULT_MASTER_PORT = "29500"


@dataclass(frozen=True)
class Placement:
    """Where this process sits among the trainer's processes."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str = "127.0.0.1"
    master_port: str = DEFAULT_MASTER_PORT

    def env(self) -> dict[str, str]:
        """The torchrun variables vLLM's ``external_launcher`` reads (``env://``)."""
        return {"RANK": str(self.rank), "LOCAL_RANK": str(self.local_rank), "WORLD_SIZE": str(self.world_size),
                "MASTER_ADDR": self.master_addr, "MASTER_PORT": self.master_port}


def placement(environ: dict[str, str] | None = None) -> Placement | None:
    """This process's place when the trainer runs several (torch.distributed initialized with
    more than one process), else None. LOCAL_RANK comes from the launcher's environment."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    env = os.environ if environ is None else environ
    rank = dist.get_rank()
    return Placement(rank=rank, local_rank=int(env.get("LOCAL_RANK", rank)), world_size=dist.get_world_size(),
                     master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                     master_port=env.get("MASTER_PORT", DEFAULT_MASTER_PORT))


def engine_args(*, folder: str, dtype: str, max_context: int, max_num_seqs: int, block_size: int,
                enable_prefix_caching: bool, enforce_eager: bool, kv_cache_gb: float | None,
                gpu_memory_utilization: float, sleep: bool, on_cpu: bool, where: Placement | None,
                logits_processors: list[Any]) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` for spo's engine (docs/vllm.md)."""
    args: dict[str, Any] = dict(
        model=folder,
        skip_tokenizer_init=True,
        load_format="dummy",
        dtype=dtype,
        generation_config="vllm",
        max_model_len=int(max_context),
        max_num_seqs=int(max_num_seqs),
        block_size=int(block_size),
        enable_prefix_caching=bool(enable_prefix_caching),
        enforce_eager=bool(enforce_eager),
        logprobs_mode="processed_logits",
        logits_processors=list(logits_processors),
        async_scheduling=False,  # the recorder reads each request's output count at every step
        seed=0 if where is None else where.rank,
    )
    if kv_cache_gb is not None:
        args["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
    if sleep:
        args["enable_sleep_mode"] = True
    if on_cpu:
        # per-request seeds crash a prefill split into chunks on the CPU backend
        args.update(enable_chunked_prefill=False, max_num_batched_tokens=max(int(max_context), 8192))
        return args
    args["gpu_memory_utilization"] = float(gpu_memory_utilization)
    args["max_num_batched_tokens"] = max(int(max_context), GPU_BATCHED_TOKENS)
    if where is not None:
        args["distributed_executor_backend"] = "external_launcher"
    return args


def check_engine_device(engine_device: Any, policy_device: Any, where: Placement | None,
                        current_device: Any = None) -> None:
    """Raise RuntimeError unless the engine's device is the policy's and, with several
    processes, this process's own GPU (cuda:LOCAL_RANK), which must also still be the
    current CUDA device (the trainer's collectives run on it)."""
    if where is not None and current_device is not None and str(current_device) != f"cuda:{where.local_rank}":
        raise RuntimeError(f"after building vLLM's engine, process {where.rank}'s current CUDA device is "
                           f"{current_device}, not cuda:{where.local_rank} (LOCAL_RANK)")
    engine, policy = str(engine_device), str(policy_device)
    if engine.startswith("cuda") and ":" not in engine:
        engine += ":0"
    if policy.startswith("cuda") and ":" not in policy:
        policy += ":0"
    if where is not None and engine.startswith("cuda") and engine != f"cuda:{where.local_rank}":
        raise RuntimeError(f"vLLM engine of process {where.rank} is on {engine}, not on its own GPU "
                           f"cuda:{where.local_rank} (LOCAL_RANK); check CUDA_VISIBLE_DEVICES and the launcher")
    if engine.split(":")[0] == policy.split(":")[0] and engine != policy:
        raise RuntimeError(f"vLLM engine is on {engine} but the policy it samples for is on {policy}")


def model_folder(config_json: str, root: str | None = None) -> Path:
    """A folder holding only the model's config.json, named by its content: the same model
    gets the same folder in every run (vLLM's compile cache is keyed on the path). Written
    through a rename, so processes starting together never see a half-written file."""
    digest = hashlib.sha256(config_json.encode()).hexdigest()[:16]
    folder = Path(root or tempfile.gettempdir()) / "spo-vllm-models" / digest
    target = folder / "config.json"
    if not target.is_file() or target.read_text() != config_json:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
            f.write(config_json)
        os.replace(f.name, target)
    return folder
