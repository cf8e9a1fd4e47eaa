"""DeepSpeed ZeRO for `OptimizerStep`: the engine built from the spec's `distributed` block.

DeepSpeed is imported only here and only for jobs with `distributed_type: DEEPSPEED` (the `deepspeed`
extra). The engine gets the loop's own AdamW and learning-rate schedule; gradient accumulation stays the
loop's (`managed_gradient_accumulation: false`: every backward accumulates, `step()` is the boundary), and
clipping is DeepSpeed's `gradient_clipping` (the config's `max_grad_norm` unless the spec sets one).
The config DeepSpeed ends up with is echoed as a log event.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from engine import distributed
from engine.algorithms.common import TrainContext, build_optimizer, build_scheduler, clip_gradients
from engine.distributed import Processes

CHECKPOINT_DIR = "deepspeed"  # inside checkpoint-<step>/
TAG = "zero"
NO_CLIP = 1e30  # a clipping threshold no gradient reaches


def use_deepspeed(spec: Any) -> bool:
    dist = spec.distributed
    return dist is not None and dist.distributed_type == "DEEPSPEED"


def deepspeed_config(spec: Any, dtype: torch.dtype, world: int) -> dict[str, Any]:
    """The DeepSpeed JSON config for a job: ZeRO stage, offload and precision from `spec.distributed`."""
    cfg, ds = spec.config, spec.distributed.deepspeed_config
    stage = ds.zero_stage if ds is not None else 0
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds is not None and ds.offload_optimizer_device == "cpu":
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds is not None and ds.offload_param_device == "cpu":
        zero["offload_param"] = {"device": "cpu"}
    clip = ds.gradient_clipping if ds is not None and ds.gradient_clipping is not None else cfg.max_grad_norm
    if stage == 0 and not clip:
        clip = NO_CLIP  # stage 0 measures the norm only while clipping
    conf: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.per_device_train_batch_size * world,
        "managed_gradient_accumulation": False,
        "gradient_clipping": clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if dtype == torch.bfloat16:
        conf["bf16"] = {"enabled": True}
    elif dtype == torch.float16:
        conf["fp16"] = {"enabled": True}
    return conf


class ZeroEngine:
    """One DeepSpeed engine around the trained model. The model object the loops hold keeps working: its
    calls are routed through the engine (which ZeRO needs to gather parameters and hook the backward)."""

    def __init__(self, ctx: TrainContext, model: Any, total_steps: int, procs: Processes) -> None:
        import deepspeed

        cfg = ctx.spec.config
        self.procs = procs
        if not procs.active:  # one process (ZeRO on a single GPU): DeepSpeed still wants a process group
            distributed.init_alone(ctx.device)
        self.config = deepspeed_config(ctx.spec, ctx.dtype, procs.world)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=build_optimizer(model, cfg),
            lr_scheduler=lambda opt: build_scheduler(opt, cfg, total_steps),
            config=self.config,
            dist_init_required=False,
        )
        self.stage = self.config["zero_optimization"]["stage"]
        self._norm: torch.Tensor | None = None
        if self.stage == 0:  # DeepSpeed records no gradient norm here: clip (and measure) with ours
            params = [p for p in model.parameters() if p.requires_grad]
            clip = self.config["gradient_clipping"]
            max_norm = clip if clip < NO_CLIP else 0.0

            def clip_and_measure() -> None:
                self._norm = clip_gradients(params, max_norm)

            self.engine.clip_fp32_gradients = clip_and_measure
        self._routing = _route_calls_through(model, self.engine)
        ctx.releases.append(self.close)
        ctx.events.log(f"deepspeed {deepspeed.__version__} config: {json.dumps(self.config, sort_keys=True)}")

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed averages gradients over ranks; the loss is already a share of the global loss.
        self.engine.backward(loss * self.procs.world, scale_wrt_gas=False)

    def step(self) -> torch.Tensor:
        """Reduce, clip, step the optimizer and the schedule, clear gradients; the pre-clip gradient norm."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        if norm is None and self._norm is not None:
            return self._norm
        return torch.tensor(float(norm) if norm is not None else float("nan"))

    def gathered(self) -> contextlib.AbstractContextManager[Any]:
        """Full parameters on every rank for the duration (ZeRO-3 partitions them; a no-op otherwise)."""
        if self.stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None)

    @contextlib.contextmanager
    def for_generation(self) -> Iterator[None]:
        """Sampling with the policy. ZeRO-3 gathers each module's parameters collectively in its forward,
        which would hang when ranks run different numbers of decoding steps: for the duration every rank
        holds the full parameters, ZeRO-3's module hooks are off and the model is called directly; the
        hooks come back (and the parameters are partitioned again) afterwards. Stages 0-2: unchanged."""
        if self.stage != 3:
            yield
            return
        import deepspeed

        offload = self.engine.optimizer.parameter_offload
        params = list(self.engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            for p in params:
                p.ds_active_sub_modules.clear()
            for hook in [*offload.forward_hooks, *offload.backward_hooks]:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
            self._routing["inside"] = True
            try:
                yield
            finally:
                self._routing["inside"] = False
                offload._register_deepspeed_module(offload.module)

    def close(self) -> None:
        """Remove DeepSpeed's hooks and buffers while every rank is still in the process group."""
        self.engine.destroy()

    def save(self, path: Path) -> None:
        """Every rank writes its shards of the model and optimizer state under `path/deepspeed`."""
        self.engine.save_checkpoint(str(path / CHECKPOINT_DIR), tag=TAG, save_latest=False)

    def load(self, path: Path) -> None:
        load_path, _ = self.engine.load_checkpoint(
            str(path / CHECKPOINT_DIR), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {path / CHECKPOINT_DIR}")


def _route_calls_through(model: torch.nn.Module, engine: Any) -> dict[str, bool]:
    """Make `model(...)` run `engine(...)` (which calls the model back, that time directly). Returns the
    switch: while its "inside" is True, calls go to the model directly."""
    base = type(model)
    state = {"inside": False}

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if state["inside"]:
            return base.__call__(self, *args, **kwargs)
        state["inside"] = True
        try:
            return engine(*args, **kwargs)
        finally:
            state["inside"] = False

    model.__class__ = type(base.__name__, (base,), {"__call__": __call__})
    return state
