"""What every training loop shares: context, precision, optimizer, schedule, batches, metrics, checkpoints.

A loop is built from these pieces (the offline algorithms through `offline.OfflineAlgorithm`):

    ctx.device / ctx.dtype / ctx.autocast()     where and in what precision the forward runs
    build_optimizer(model, cfg), build_scheduler(opt, cfg, total_steps)
    BatchStream(lengths, batch_size, seed)      length-bucketed, resumable micro-batch order
    StepMetrics(device)                         on-device accumulation, one host transfer per log
    Checkpointer(out_dir / "checkpoints", ...)  model/adapter + optimizer + scheduler + RNG + data position

Losses are not computed here: they come from `engine.losses`, already normalised by the global count of
the whole optimizer step, so the loop backwards each micro-batch loss as is and never divides by
gradient_accumulation_steps.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine import distributed
from engine.algorithms.timing import PhaseTimer
from engine.events import EventWriter, NullEvents

STATE_FILE = "trainer_state.pt"


class TrainingStopped(Exception):
    """Raised at a micro-step boundary after SIGTERM; `python -m engine.train` exits 143 on it."""


# ------------------------------------------------------------------------------------------- context


def choose_device(spec: Any) -> torch.device:
    """cuda (the local rank's device) for GPU jobs when CUDA is present, else cpu."""
    if spec.hardware.accelerator == "gpu" and torch.cuda.is_available():
        import os

        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


@dataclass
class TrainContext:
    """Everything a loop needs besides the spec's own fields. `stop` is set by the SIGTERM handler."""

    spec: Any
    out_dir: Path
    events: EventWriter = field(default_factory=NullEvents)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32  # the compute dtype (of the forward and of frozen models)
    precision: str | None = None  # the spec's precision mode (engine.spec.precision); None: from dtype
    stop: threading.Event = field(default_factory=threading.Event)
    seed: int = 42
    resume: bool = False
    cache_dir: Path | None = None  # model cache (None: engine.models.default_cache_dir())
    uploads_dir: Path = Path("var/uploads")  # where uploaded dataset files live
    step: int = 0  # the last completed optimizer step (kept up to date by the loops)
    rollout_server: Any = None  # engine.rollout.vllm_server.ServerOptions for vllm_mode 'server'
    timer: PhaseTimer = field(default_factory=PhaseTimer)  # per-phase seconds, logged as time/<phase>
    # what a finished job releases before its processes leave their group (DeepSpeed's engine), newest first
    releases: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def for_spec(cls, spec: Any, out_dir: str | Path, **kw: Any) -> TrainContext:
        from engine.precision import compute_dtype
        from engine.spec.precision import precision_of

        device = kw.pop("device", None) or choose_device(spec)
        mode = precision_of(spec)
        return cls(
            spec=spec,
            out_dir=Path(out_dir),
            device=device,
            dtype=compute_dtype(mode),
            precision=mode,
            seed=spec.config.seed,
            **kw,
        )

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to the compute dtype for the forward of the autocast modes; nothing when the weights are
        already in the compute dtype (float32, bf16-pure)."""
        if self.dtype == torch.float32 or self.precision == "bf16-pure":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise TrainingStopped("stopped by SIGTERM")

    def release(self) -> None:
        """Run and forget the registered releases, the last registered first."""
        while self.releases:
            self.releases.pop()()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)


# ----------------------------------------------------------------------------------- optimizer, schedule


def _no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


FUSED_ADAMW_DEVICES = ("cpu", "cuda", "mps", "xpu")  # devices with torch's fused AdamW kernel


def build_optimizer(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """The optimizer named by `optim` over trainable parameters; biases and norm weights get no weight decay
    (HF rule). `adamw_torch_fused` uses torch's fused kernel wherever torch has one for the parameters'
    device and dtype (CPU included), and plain AdamW elsewhere."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters (check peft_config.target_modules)")
    decay = [p for n, p in named if not _no_decay(n, p)]
    no_decay = [p for n, p in named if _no_decay(n, p)]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    lr = cfg.learning_rate
    if cfg.optim == "sgd":
        return torch.optim.SGD(groups, lr=lr)
    if cfg.optim == "adagrad":
        return torch.optim.Adagrad(groups, lr=lr)
    if cfg.optim == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr)
    if cfg.optim == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False)
    fused = cfg.optim == "adamw_torch_fused" and all(
        p.device.type in FUSED_ADAMW_DEVICES and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
        for _, p in named
    )
    return torch.optim.AdamW(
        groups,
        lr=lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        fused=fused or None,
    )


def allocate_adamw_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's moments now, exactly as its first step would. Made before any activation exists they
    lie together; made inside the first step they fill the holes freed activations left in the allocator's
    heap, the next step's activations no longer fit there, and the peak RSS grows step after step."""
    if type(optimizer) is not torch.optim.AdamW:
        return
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    for group in optimizer.param_groups:
        on_device = bool(group["fused"] or group["capturable"])
        for p in group["params"]:
            state = optimizer.state[p]
            if state:
                continue
            if on_device:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            else:
                state["step"] = torch.tensor(0.0, dtype=scalar)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def warmup_steps(cfg: Any, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, total_steps: int) -> Any:
    """The HF schedule named by `lr_scheduler_type`, with `warmup_steps` (or `warmup_ratio` of the total)."""
    from transformers import get_scheduler

    kwargs: dict[str, Any] = {}
    if cfg.lr_scheduler_type == "cosine_with_min_lr":
        kwargs["min_lr_rate"] = 0.1
    return get_scheduler(
        cfg.lr_scheduler_type,
        optimizer,
        num_warmup_steps=warmup_steps(cfg, total_steps),
        num_training_steps=total_steps,
        scheduler_specific_kwargs=kwargs or None,
    )


def clip_gradients(parameters: Sequence[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` (0: no clipping); returns the pre-clip total norm as a device tensor (no sync)."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.zeros(())
    return torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)


# ------------------------------------------------------------------------------------------- batches


def plan_epoch(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, shuffle: bool = True, window: int = 64
) -> list[list[int]]:
    """Micro-batches (lists of row indices) for one epoch, bucketed by length to keep padding small.

    Rows are permuted (seeded by `seed` and `epoch`; identity when `shuffle` is False), cut into windows of
    `window` batches, each window sorted by length and split into batches, and the batches of the epoch are
    then shuffled. Every row appears exactly once; the last batch may be smaller.
    """
    n = len(lengths)
    if n == 0:
        raise ValueError("the dataset has no usable rows")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
    span = batch_size * window
    batches: list[list[int]] = []
    for start in range(0, n, span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    if shuffle:
        perm = torch.randperm(len(batches), generator=gen).tolist()
        batches = [batches[i] for i in perm]
    return batches


class BatchStream:
    """An endless, resumable sequence of micro-batches over epochs. `position` / `restore()` round-trip."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.index = 0
        self._plan = plan_epoch(self.lengths, batch_size, seed, 0, shuffle)

    @property
    def batches_per_epoch(self) -> int:
        return len(self._plan)

    @property
    def epoch_float(self) -> float:
        return self.epoch + self.index / len(self._plan)

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def restore(self, position: dict[str, int]) -> None:
        self.epoch, self.index = int(position["epoch"]), int(position["index"])
        self._plan = plan_epoch(self.lengths, self.batch_size, self.seed, self.epoch, self.shuffle)

    def next(self) -> list[int]:
        if self.index >= len(self._plan):
            self.epoch += 1
            self.index = 0
            self._plan = plan_epoch(self.lengths, self.batch_size, self.seed, self.epoch, self.shuffle)
        batch = self._plan[self.index]
        self.index += 1
        return batch

    def take(self, n: int) -> list[list[int]]:
        return [self.next() for _ in range(n)]


def total_optimizer_steps(cfg: Any, batches_per_epoch: int) -> int:
    """`max_steps` when > 0, else ceil(num_train_epochs * batches_per_epoch / gradient_accumulation_steps)."""
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(cfg.num_train_epochs * batches_per_epoch / cfg.gradient_accumulation_steps))


# ------------------------------------------------------------------------------------------- metrics


class StepMetrics:
    """Metric accumulator that stays on the device until `compute()`, which does one host transfer.

    `add_sum(name, value)` adds values (e.g. globally normalised micro-batch losses, which sum to the
    step's loss); `add_mean(name, value, weight)` keeps a weighted mean (value is a sum over `weight` items
    or a mean when `weight` is a count given with `is_sum=False`). Several optimizer steps may accumulate
    before a log; sums are then averaged over those steps.

    With several processes `compute()` sums each rank's sums (losses divide by global counts, so they
    add up) and the totals and weights of the means over the ranks, so every metric is a global value;
    `replicated=True` marks a value every rank already holds in full (the gradient norm), which is not
    added up; `StepMetrics(device, local=True)` is reduced over nothing (every rank computed the same
    values, e.g. on the whole evaluation set).
    """

    def __init__(self, device: torch.device | str = "cpu", local: bool = False) -> None:
        self.device = torch.device(device)
        self.local = local
        self._sums: dict[str, list[torch.Tensor]] = {}
        self._means: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._scalars: dict[str, float] = {}
        self._replicated: set[str] = set()
        self.steps = 0

    def _t(self, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            return value.detach().float().reshape(())
        return torch.tensor(float(value), device=self.device)

    def add_sum(self, name: str, value: Any, replicated: bool = False) -> None:
        self._sums.setdefault(name, []).append(self._t(value))
        if replicated:
            self._replicated.add(name)

    def add_mean(self, name: str, total: Any, weight: Any) -> None:
        """Adds `total` (a sum over `weight` items) to a running weighted mean."""
        self._means.setdefault(name, []).append((self._t(total), self._t(weight)))

    def set(self, name: str, value: float) -> None:
        """A host-side scalar (e.g. the learning rate): no transfer needed."""
        self._scalars[name] = float(value)

    def end_step(self) -> None:
        self.steps += 1

    def compute(self) -> dict[str, float]:
        """All metrics as floats with one device->host transfer; resets the accumulator."""
        procs = distributed.SINGLE if self.local else distributed.current()
        sums, means = dict(self._sums), dict(self._means)
        if procs.active:  # every rank reduces the same names in the same order
            names: list[list[str]] = [[] for _ in range(procs.world)]
            torch.distributed.all_gather_object(names, [sorted(sums), sorted(means)])
            for sum_names, mean_names in names:
                for name in sum_names:
                    sums.setdefault(name, [])
                for name in mean_names:
                    means.setdefault(name, [])
        steps = max(1, self.steps)
        zero = torch.zeros((), device=self.device)
        sum_names, mean_names = sorted(sums), sorted(means)
        parts = [torch.stack([zero, *(v.to(self.device) for v in sums[n])]).sum() / steps for n in sum_names]
        for name in mean_names:
            parts.append(torch.stack([zero, *(t.to(self.device) for t, _ in means[name])]).sum())
            parts.append(torch.stack([zero, *(w.to(self.device) for _, w in means[name])]).sum())
        out: dict[str, float] = {}
        if parts:
            values = torch.stack(parts)
            if procs.active:
                values = distributed.all_reduce_sum_(values.cpu().double()).to(values.dtype)
            host = values.tolist()
            for i, name in enumerate(sum_names):
                out[name] = host[i] / (procs.world if name in self._replicated else 1)
            for j, name in enumerate(mean_names):
                tot, wt = host[len(sum_names) + 2 * j], host[len(sum_names) + 2 * j + 1]
                out[name] = tot / wt if wt > 0 else math.nan
        out.update(self._scalars)
        self._sums.clear()
        self._means.clear()
        self._scalars.clear()
        self.steps = 0
        return out


# ---------------------------------------------------------------------------------------- checkpoints


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_weights(model: Any, path: str | Path) -> None:
    """Load the weights saved by `engine.models.save_model` at `path` into `model` in place."""
    from safetensors.torch import load_file

    from engine.models import is_peft_model, unwrap

    path = Path(path)
    model = unwrap(model)
    if is_peft_model(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        return
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights under {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    really_missing = [k for k in missing if k not in tied]
    if really_missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not match the model: missing {really_missing[:5]}, unexpected {unexpected[:5]}"
        )


class Checkpointer:
    """Writes `checkpoint-<step>/` folders (model or adapter, tokenizer, `trainer_state.pt`) under `root`,
    keeping at most `save_total_limit` of them (None keeps all). Folders appear atomically (renamed from a
    temporary name), so `latest()` never returns a half-written checkpoint."""

    def __init__(self, root: str | Path, save_total_limit: int | None = None) -> None:
        self.root = Path(root)
        self.save_total_limit = save_total_limit

    def all(self) -> list[Path]:
        if not self.root.exists():
            return []
        found = []
        for p in self.root.iterdir():
            step = p.name.removeprefix("checkpoint-")
            if (
                p.is_dir()
                and p.name.startswith("checkpoint-")
                and step.isdigit()
                and (p / STATE_FILE).exists()
            ):
                found.append((int(step), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(
        self,
        step: int,
        model: Any,
        tokenizer: Any,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any,
        data_position: dict[str, int] | None = None,
        algorithm_state: dict[str, Any] | None = None,
        scaler: Any = None,
    ) -> Path:
        from engine.models import save_model

        tmp = self.begin(step)
        save_model(model, tokenizer, tmp)
        return self.commit(step, tmp, optimizer, scheduler, data_position, algorithm_state, scaler)

    def temporary(self, step: int) -> Path:
        return self.root / f".checkpoint-{step}.tmp"

    def begin(self, step: int) -> Path:
        """An empty temporary folder for checkpoint `step` (the model and other files are written there)."""
        tmp = self.temporary(step)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit(
        self,
        step: int,
        tmp: Path,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any,
        data_position: dict[str, int] | None = None,
        algorithm_state: dict[str, Any] | None = None,
        scaler: Any = None,
    ) -> Path:
        """Write `trainer_state.pt` into `tmp`, rename it to `checkpoint-<step>` and prune old ones."""
        final = self.root / f"checkpoint-{step}"
        state = {
            "step": step,
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "rng": rng_state(),
            "data_position": data_position,
            "algorithm_state": algorithm_state or {},
        }
        torch.save(state, tmp / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        self._prune()
        return final

    def _prune(self) -> None:
        if self.save_total_limit is None:
            return
        for old in self.all()[: -self.save_total_limit]:
            shutil.rmtree(old, ignore_errors=True)

    def load(
        self,
        path: str | Path,
        model: Any,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        scaler: Any = None,
        map_location: torch.device | str = "cpu",
    ) -> dict[str, Any]:
        """Restore weights, optimizer, scheduler, scaler and RNG in place; return the saved state dict
        (`step`, `data_position`, `algorithm_state`)."""
        path = Path(path)
        load_model_weights(model, path)
        state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=False)
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state.get("rng", {}))
        return state


def evaluate_offline(
    ctx: TrainContext,
    model: Any,
    batches: list[Any],
    counts: Callable[[list[Any]], Any],
    micro_step: Callable[[Any, Any, StepMetrics], torch.Tensor],
) -> dict[str, float]:
    """The loss and metrics of `micro_step` over a whole evaluation set (no gradients, eval mode), with the
    set's totals as the normaliser, keyed `eval/loss` and `eval/<metric>`. One host transfer. Every rank
    scores the whole set, so the metrics are not added up over ranks."""
    metrics = StepMetrics(ctx.device, local=True)
    totals = counts(batches)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ctx.autocast():
            for batch in batches:
                metrics.add_sum("train/loss", micro_step(batch, totals, metrics))
    finally:
        model.train(was_training)
    metrics.end_step()
    return {("eval/loss" if k == "train/loss" else f"eval/{k}"): v for k, v in metrics.compute().items()}


def offline_evaluator(
    ctx: TrainContext,
    model: Any,
    num_rows: int,
    batch_size: int,
    collate: Callable[[list[int]], Any],
    counts: Callable[[list[Any]], Any],
    micro_step: Callable[[Any, Any, StepMetrics], torch.Tensor],
) -> Callable[[], dict[str, float]] | None:
    """The `evaluate` of `OfflineParts`: the eval set in fixed batches of `batch_size` row indices, each
    collated by `collate(indices)` and scored by `evaluate_offline`. None when there is no eval set."""
    if not num_rows:
        return None
    plan = [list(range(i, min(i + batch_size, num_rows))) for i in range(0, num_rows, batch_size)]

    def evaluate() -> dict[str, float]:
        return evaluate_offline(ctx, model, [collate(idx) for idx in plan], counts, micro_step)

    return evaluate


def sample_batches(
    num_rows: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[int]]:
    """Plain batches of row indices for one epoch, no length bucketing (e.g. prompt batches of online
    algorithms): a seeded permutation per epoch cut into `batch_size` pieces (the last may be smaller)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_rows, generator=gen).tolist() if shuffle else list(range(num_rows))
    return [order[i : i + batch_size] for i in range(0, num_rows, batch_size)]


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
