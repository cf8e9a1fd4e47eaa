"""The `vllm` rollout backend (GPU only): a colocated `vllm.LLM` in the training process.

vLLM is imported when the backend is constructed, never at module import, so this file imports on machines
without vLLM. The engine is started from a local model folder (the policy's weights saved as safetensors),
takes `gpu_memory_utilization` of the GPU, samples `n = num_generations` completions per prompt from token-id
prompts, and returns the sampled tokens' log-probs (always: they are what the importance-sampling correction
compares against). Between generations it sleeps (weights moved to host memory, KV cache freed) so the
trainer has the GPU; `sync_weights` wakes it and reloads the policy's current weights (LoRA merged) in place.

Server mode (vLLM in its own process, CPU or GPU) is `engine.rollout.vllm_server`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from engine.rollout.base import RolloutBackend, RolloutOutput, SamplingParams, output_from_token_rows


class VLLMRollout(RolloutBackend):
    name = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        dtype: str = "bfloat16",
        seed: int = 0,
        enforce_eager: bool = False,
    ) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "use_vllm needs a CUDA GPU; set config.use_vllm=false to sample with transformers"
            )
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError(
                "use_vllm=true but vllm is not installed on this worker (pip install 'papertrain[gpu]')"
            ) from exc
        # Keep the engine in this process so that weights reach it without serialisation.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=model_path,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            seed=seed,
            enforce_eager=enforce_eager,
            enable_prefix_caching=True,
            enable_sleep_mode=True,
            logprobs_mode="processed_logprobs",  # the distribution tokens were actually sampled from
        )
        self.asleep = False
        self._sleep()

    def _sleep(self) -> None:
        """Level 1: weights to host memory, KV cache dropped; the trainer gets the GPU back."""
        if not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _sampling_params(self, num_generations: int, p: SamplingParams) -> Any:
        return self._vllm.SamplingParams(
            n=num_generations,
            temperature=p.temperature,
            top_p=p.top_p,
            top_k=p.top_k if p.top_k else -1,
            min_p=p.min_p or 0.0,
            repetition_penalty=p.repetition_penalty,
            max_tokens=p.max_new_tokens,
            stop_token_ids=list(p.eos_token_ids),
            logprobs=0,  # the sampled token's log-prob only
        )

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], num_generations: int, params: SamplingParams
    ) -> RolloutOutput:
        prompts = [{"prompt_token_ids": list(map(int, ids))} for ids in prompt_ids]
        self._wake()
        try:
            results = self.llm.generate(
                prompts, self._sampling_params(num_generations, params), use_tqdm=False
            )
        finally:
            self._sleep()
        rows, logps = [], []
        for res in results:
            for comp in res.outputs:
                tokens = list(comp.token_ids)
                rows.append(tokens)
                logps.append([lp[t].logprob for lp, t in zip(comp.logprobs or [], tokens, strict=True)])
        return output_from_token_rows(prompt_ids, num_generations, rows, logps, params)

    def sync_weights(self, model: torch.nn.Module, version: int | None = None) -> None:
        weights = merged_state_items(model)
        self._wake()  # the next generation follows at once; it puts the engine back to sleep
        # vLLM's in-place reload: checkpoint-format weights, re-processed into the kernels' layout.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()


def merged_state_items(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs in the base model's naming; LoRA adapters are merged into a copy of the weights."""
    if hasattr(model, "merge_adapter") and hasattr(model, "unmerge_adapter"):
        model.merge_adapter()
        try:
            items = list(_clean_names(model.named_parameters()))
        finally:
            model.unmerge_adapter()
        return items
    return list(_clean_names(model.named_parameters()))


def merge_round_trip(model: torch.nn.Module) -> None:
    """Merge and unmerge a LoRA model's adapters as `merged_state_items` does, without the copy: a process
    that does not send weights rounds its frozen base weights the same way as the one that does."""
    if hasattr(model, "merge_adapter") and hasattr(model, "unmerge_adapter"):
        model.merge_adapter()
        model.unmerge_adapter()


def _clean_names(named: Iterable[tuple[str, torch.Tensor]]) -> Iterable[tuple[str, torch.Tensor]]:
    for name, param in named:
        if "lora_" in name or ".original_module." in name:
            continue
        name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        name = name.replace(".modules_to_save.default", "")
        yield name, param.detach().clone()
