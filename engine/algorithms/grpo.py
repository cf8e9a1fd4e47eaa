"""GRPO and its variants (DAPO, Dr. GRPO, GSPO, SAPO, CISPO, GFPO, ...): generate, score, train.

    python -m engine.train --spec grpo.json --out runs/grpo     # dispatches to train(spec, ctx)

Batching. One *generation* samples `num_generations` (G) completions for each of
`per_device_train_batch_size * steps_per_generation / G` prompts, scores them (rewards -> `combine_rewards`
-> the objective's advantages), shuffles the rows and cuts them into `steps_per_generation` (SPG) slices of
`per_device_train_batch_size` completions. Every slice is a micro-step; an optimizer step takes
`gradient_accumulation_steps` (GA) of them, and each generation is replayed `num_iterations` (mu) times.
Within one optimizer step the rows are re-cut by length (the step's gradient does not depend on the cut,
because losses divide by the step's global counts) so micro-batches carry little padding.

The loop also trains RLOO (`engine.algorithms.rloo`). What differs is an `Objective`: how rewards become
advantages (called once old / reference log-probs are known, so RLOO can put its KL into the reward), the
policy loss config, and whether old log-probs are always computed. GRPO-only knobs (dynamic sampling, the
GFPO filter, entropy masks and bonuses, the fp32 LM head) are read with `_option`, so a config without them
(RLOOConfig) leaves them off. GFPO (`num_remains_in_group`) drops all but k completions of each group
before their log-probs and advantages are computed (`completions_scored` counts the survivors).

Old log-probs are computed at generation time only when some optimizer step falls between generation and
use (GA % (SPG * mu) != 0), vLLM's importance-sampling correction needs them or the objective always wants
them (RLOO); otherwise the ratio is exactly 1 (on-policy). The reference model exists only when `beta` > 0.
Entropies are computed only when `top_entropy_quantile` < 1 or an entropy bonus needs them (so
`policy/entropy` is logged only then); the entropy threshold is taken per micro-step (over the micro-batches
of that micro-step on every rank), as TRL does, except
with an entropy bonus, which averages over the tokens the mask keeps in the whole step: then one extra no-grad
forward per micro-batch gives the step's threshold and kept-token count (`_entropy_step_counts`).
Training micro-steps never sync with the host; metrics are transferred once per logged optimizer step (plus
one value per step for adaptive entropy).

Shared prompts. The G completions of a prompt carry the same prompt tokens: the log-prob forwards (policy,
old, reference) run each distinct prompt of a micro-batch once and its completions on the prompt's KV cache
(`engine.prefix`), and an optimizer step is cut so that the rows of one prompt stay together. Same results
as the padded forward (up to float rounding). The padded forward runs instead, said once in the events,
for image prompts (pixel inputs per row), ZeRO-3 (ranks must run the same forwards in lockstep), activation
checkpointing (no KV cache) and models whose attention is not full attention; and, silently, for a
micro-batch where no two rows share a prompt. `Counters.decoder_tokens` (and the metric
`train/decoder_tokens`, per optimizer step) count the token positions the decoder ran.

Several processes: every rank draws the prompts of all ranks from the same sampler; the generation's
completions (group after group) are cut into equal contiguous shares in rank order and each rank samples
its share, so a group straddles ranks when a share is not a multiple of G (the Dr. GRPO recipe: one
completion per process, 8 processes per group). Rewards, lengths and truncation flags are gathered
(all_gather), so every rank computes the group and batch statistics of the whole generation, keeps the
advantages of its own rows, and logs exact global rollout metrics. The step's counts are summed over ranks
and entropy thresholds are taken over every rank's tokens (`engine.distributed`). The GFPO filter needs
whole groups on each rank, which `engine.spec.unsupported` checks. Dynamic sampling gathers each round's
completions on every rank, so all ranks choose the same groups; each keeps its share of the batch.
With `use_vllm` (server mode) one vLLM server serves every rank: rank 0 starts it and sends the weights
after each optimizer step while the others wait (`_sync_weights`), and every completion is sampled under
a seed of its own (`_completion_seed`), so the samples do not depend on the number of processes.

Checkpoints store the prompt sampler's position after the last generation and the RNG states; a resumed
job starts with a fresh generation, so rows of a generation that was only partly trained on (SPG > GA or
num_iterations > 1) are not replayed.

Not here: loss formulas (`engine.losses`), advantage formulas (`engine.advantages`), reward definitions
(`engine.rewards`), sampling (`engine.rollout`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import advantages as adv_lib
from engine import distributed
from engine.algorithms.common import StepMetrics, TrainContext, seed_everything, total_optimizer_steps
from engine.algorithms.step import OptimizerStep
from engine.data.formats import expect_format
from engine.data.sources import load_rows
from engine.errors import JobError
from engine.functional import GlobalCounts
from engine.logprobs import token_logprobs
from engine.losses import (
    PolicyBatch,
    PolicyLossConfig,
    entropy_threshold,
    high_entropy_mask,
    policy_loss,
    vllm_is_metrics,
)
from engine.models import (
    is_peft_model,
    is_vision_model,
    load_policy,
    load_processor,
    load_reference,
    load_tokenizer,
    save_model,
)
from engine.multimodal.job import vision_setup
from engine.multimodal.thumbnails import sample_images
from engine.prefix import decoder_tokens, shared_prompt_stats, unsupported
from engine.rewards import RewardContext, build_reward_funcs
from engine.rollout import SamplingParams, make_backend
from engine.rollout.buffer import MicroBatch, Sampled, ScoredRollout, split_by_length, split_by_prompt
from engine.rollout.prompts import PromptEncoder, PromptSampler, display_prompt
from engine.rollout.vllm import merge_round_trip
from engine.rollout.vllm_server import ServerOptions
from engine.spec.grpo import GRPOConfig

FORMATS = ("prompt_only", "prompt_completion")
NOT_REWARD_COLUMNS = ("prompt", "completion", "completion_ids")


@dataclass
class Slice:
    """One micro-step's share of a generation: row indices into `rollout`."""

    rollout: ScoredRollout
    rows: list[int]


@dataclass
class Plan:
    """Batch sizes derived from the config, checked once at start-up.

    `batch_size` and `steps_per_generation` are per process; a generation samples
    `prompts_per_generation` prompts x `num_generations` completions over all `world` processes."""

    num_generations: int
    batch_size: int  # completions per micro-step on each process
    steps_per_generation: int
    grad_accum: int
    num_iterations: int
    prompts_per_generation: int  # over all processes
    needs_old_logps: bool
    world: int = 1

    @classmethod
    def from_config(cls, cfg: Any, always_old_logps: bool = False, world: int = 1) -> Plan:
        spg, ga, mu = cfg.effective_steps_per_generation, cfg.gradient_accumulation_steps, cfg.num_iterations
        completions = cfg.per_device_train_batch_size * spg * world
        # refused at submission (engine.spec.unsupported): a generation is whole groups over all processes
        assert completions % cfg.num_generations == 0, (completions, cfg.num_generations)
        is_correction = bool(cfg.use_vllm and cfg.vllm_importance_sampling_correction)
        return cls(
            num_generations=cfg.num_generations,
            batch_size=cfg.per_device_train_batch_size,
            steps_per_generation=spg,
            grad_accum=ga,
            num_iterations=mu,
            prompts_per_generation=completions // cfg.num_generations,
            needs_old_logps=always_old_logps or (ga % (spg * mu) != 0) or is_correction,
            world=world,
        )


@dataclass
class Counters:
    """How often the expensive forwards ran (tests assert on these; also logged at the end)."""

    generations: int = 0
    old_logp_forwards: int = 0
    ref_logp_forwards: int = 0
    policy_forwards: int = 0
    completions_sampled: int = 0  # completions in the generation batches (dynamic sampling's spares too)
    completions_scored: int = 0  # completions given an advantage (after the GFPO filter)
    stale_slices_dropped: int = 0  # slices refused because their policy lag exceeded max_policy_lag
    shared_prompt_forwards: int = 0  # log-prob forwards that ran each distinct prompt once
    decoder_tokens: int = 0  # token positions run through the decoder by log-prob forwards


Advantages = Callable[[torch.Tensor, int, ScoredRollout], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class Objective:
    """What one algorithm trained by this loop decides for itself.

    loss: the policy loss (`engine.losses`, dispatched on `loss.loss_type`).
    aggregation: `multi_objective_aggregation` used to combine the reward functions' columns.
    always_old_logps: compute old log-probs at generation time even when the step is on-policy.
    advantages(rewards (N,), group, rollout) -> (advantages (N,), metrics): called once per generation
        batch, after the rollout's old / reference log-probs are filled; rows are in groups of `group`.
        `rewards` are those of the whole generation batch (every rank's rows, in rank order) while
        `rollout` holds this rank's rows: per-row inputs taken from it are gathered the same way
        (`engine.distributed.gather_rows`), and metrics are global values.
    """

    loss: PolicyLossConfig
    aggregation: str
    always_old_logps: bool
    advantages: Advantages


def grpo_objective(cfg: Any) -> Objective:
    """GRPO and its variants: group-relative advantages, the loss of `cfg.loss_type`."""

    def advantages(
        rewards: torch.Tensor, group: int, rollout: ScoredRollout
    ) -> tuple[torch.Tensor, dict[str, float]]:
        adv, _ = adv_lib.group_advantages(
            rewards, group, cfg.scale_rewards, aggregation=cfg.multi_objective_aggregation
        )
        return adv, {}

    return Objective(
        loss=PolicyLossConfig.from_spec(cfg),
        aggregation=cfg.multi_objective_aggregation,
        always_old_logps=False,
        advantages=advantages,
    )


def _option(cfg: Any, name: str) -> Any:
    """A GRPO-only knob; a config without it (RLOOConfig) gets GRPOConfig's default, which turns it off."""
    return getattr(cfg, name, GRPOConfig.model_fields[name].default)


@dataclass
class GRPOState:
    """Algorithm state saved in checkpoints."""

    entropy_coef: float = 0.0  # adaptive entropy bonus: the coefficient in force
    last_entropy: float = math.inf  # the previous optimizer step's token-mean entropy


class GRPOTrainer:
    def __init__(self, spec: Any, ctx: TrainContext, objective: Objective | None = None) -> None:
        self.spec, self.ctx, self.cfg = spec, ctx, spec.config
        cfg = self.cfg
        self.objective = objective or grpo_objective(cfg)
        self.plan = Plan.from_config(
            cfg, always_old_logps=self.objective.always_old_logps, world=distributed.current().world
        )
        self.counters = Counters()
        seed_everything(ctx.seed)

        raw_rows = load_rows(spec.dataset, ctx.uploads_dir)
        # image prompts (engine.multimodal): canonical rows, the VLM's processor and a pixel-aware encoder
        self.vision = vision_setup(
            spec,
            raw_rows,
            ctx.uploads_dir,
            FORMATS,
            vlm=is_vision_model(spec.model, ctx.cache_dir),
            load_processor=lambda: load_processor(spec.model, ctx.cache_dir),
        )
        if self.vision is None:
            _, self.rows = expect_format(raw_rows, FORMATS, spec.algorithm)
            self.tokenizer = load_tokenizer(spec.model, ctx.cache_dir)
        else:
            self.rows, self.tokenizer = self.vision.rows, self.vision.tokenizer
        rows = self.rows
        self.eos_ids = _eos_ids(self.tokenizer)
        self.pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        )
        self.encoder = (
            PromptEncoder(self.tokenizer, cfg.max_prompt_length)
            if self.vision is None
            else self.vision.encoder
        )
        self.sampler = PromptSampler(len(rows), ctx.seed, shuffle=cfg.shuffle_dataset)

        self.model = load_policy(spec, ctx.device, ctx.dtype, ctx.cache_dir)
        cast_head = _option(cfg, "cast_lm_head_to_fp32")
        if cast_head:
            _cast_lm_head_to_fp32(self.model)
        self.reference = None
        if cfg.beta > 0:
            self.reference = load_reference(spec, self.model, ctx.device, ctx.dtype)
            if cast_head and not self.reference.adapter_disabled:
                _cast_lm_head_to_fp32(self.reference.model)
        # refused at submission (engine.spec.unsupported): a moving reference needs beta > 0 and no LoRA
        assert not cfg.sync_ref_model or (self.reference is not None and not self.reference.adapter_disabled)

        self.reward_funcs = build_reward_funcs(
            spec.reward_funcs,
            RewardContext(max_completion_length=cfg.max_completion_length, device=ctx.device),
        )
        self.reward_names = [r.name for r in spec.reward_funcs]
        self.reward_weights = torch.tensor(
            cfg.reward_weights or [1.0] * len(self.reward_funcs), dtype=torch.float32
        )
        self.loss_cfg = self.objective.loss
        self.adaptive_entropy = bool(_option(cfg, "use_adaptive_entropy"))
        self.need_entropy = (
            _option(cfg, "top_entropy_quantile") < 1.0
            or _option(cfg, "entropy_coef") != 0.0
            or self.adaptive_entropy
        )
        self.state = GRPOState(entropy_coef=_option(cfg, "entropy_coef"))
        self.sampling = SamplingParams(
            max_new_tokens=cfg.max_completion_length,
            eos_token_ids=self.eos_ids,
            pad_token_id=self.pad_id,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            min_p=cfg.min_p,
            repetition_penalty=cfg.repetition_penalty,
            suppress_token_ids=() if self.vision is None else self.vision.placeholder_ids,
        )
        self.backend = self._make_backend()
        self.weights_changed = self.backend.needs_first_sync
        self.queue: list[Slice] = []
        self._step_entropy: Any = 0.0
        self.last_rollout: ScoredRollout | None = None
        self.stepper: OptimizerStep | None = None
        self._sharing_said = False
        rank = distributed.current().rank
        if rank:  # the weights are loaded alike everywhere; sampling must differ between ranks
            seed_everything(ctx.seed + rank)

    # ------------------------------------------------------------------------------------------ set-up

    def _make_backend(self) -> Any:
        cfg = self.cfg
        if not cfg.use_vllm:
            return make_backend("hf", model=self.model, device=self.ctx.device)
        max_model_len = (cfg.max_prompt_length or 512) + cfg.max_completion_length
        if cfg.vllm_mode == "server":
            return self._server_backend(max_model_len)
        # refused at submission (engine.spec.unsupported): the colocated engine lives in one process
        assert not distributed.current().active
        return make_backend(
            "vllm",
            model_path=str(self._initial_weights()),
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype={torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(self.ctx.dtype, "float32"),
            seed=self.ctx.seed,
        )

    def _initial_weights(self) -> Path:
        """vLLM starts from full weights on disk (LoRA merged into a copy); later syncs send the weights."""
        model = copy.deepcopy(self.model).merge_and_unload() if is_peft_model(self.model) else self.model
        return Path(save_model(model, self.tokenizer, self.ctx.out_dir / ".vllm-init"))

    def _server_backend(self, max_model_len: int) -> Any:
        """One server per job: the main process starts it (or connects to the configured one) and sends the
        weights; the other processes sample from it at the address the main process passes them."""
        cfg, procs = self.cfg, distributed.current()
        opts: ServerOptions = self.ctx.rollout_server or ServerOptions()
        machines = self.spec.distributed.num_machines if self.spec.distributed is not None else 1
        if machines > 1 and not opts.url:
            raise JobError(
                "a job's own vLLM server listens on 127.0.0.1 of the first machine, which the processes on "
                f"the other {machines - 1} machine(s) cannot reach",
                code="rollout_server_unreachable",
                param="distributed.num_machines",
                remediation="run the job on one machine (distributed.num_machines 1), or set "
                "PAPERTRAIN_VLLM_SERVER_URL on the workers to a vLLM server that every machine reaches",
            )
        if procs.active:  # the clients could not follow a restarted server's address and weights
            opts = dataclasses.replace(opts, max_restarts=0)
        settings = {
            "work_dir": self.ctx.out_dir / ".vllm-server",
            "seed": self.ctx.seed,
            "max_model_len": max_model_len,
            "gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
        }
        backend = None
        if procs.is_main:
            model_dir = "" if opts.url else self._initial_weights()  # a running server has its own model
            backend = make_backend("vllm-server", model_dir=model_dir, opts=opts, **settings)
            self.ctx.events.log(f"rollout: vLLM server at {backend.url}")
        url, first_sync = distributed.object_from_main(
            None if backend is None else (backend.url, backend.needs_first_sync)
        )
        if backend is None:
            client = dataclasses.replace(opts, url=url)
            backend = make_backend("vllm-server", model_dir="", opts=client, sends_weights=False, **settings)
            backend.needs_first_sync = first_sync
        return backend

    @property
    def columns(self) -> list[str]:
        return [c for c in self.rows[0] if c not in NOT_REWARD_COLUMNS]

    # -------------------------------------------------------------------------------------- generation

    def _take_slots(self, prompts: int) -> list[tuple[int, int, int]]:
        """This rank's completions of the next `prompts` prompts (over all ranks), as (prompt row, index in
        its group, completion number in the job). Every rank draws the same prompts from the same sampler;
        the global list of completions, group after group, is cut into equal contiguous shares in rank
        order, so a group stays on one rank when a rank's share is a multiple of num_generations and
        straddles ranks otherwise (its statistics then come from the gathered rewards, see `_score`).
        The completion number (prompts drawn before x G + place) does not depend on the number of ranks."""
        G, first = self.plan.num_generations, self.sampler.drawn
        rows = self.sampler.take(prompts)
        slots = [(row, j, (first + i) * G + j) for i, row in enumerate(rows) for j in range(G)]
        procs = distributed.current()
        return distributed.shard(slots, procs) if procs.active else slots

    def _sample(self, slots: list[tuple[int, int, int]]) -> Sampled:
        """Generate the completions `slots` name and reward them (rewards are host-side). A seeded sampler
        gets one seed per completion from the job's seed and the completion's number, so the samples do not
        depend on how many processes share the generation."""
        runs: list[list[int]] = []  # [prompt row, completions] of consecutive slots of one prompt
        for row, _, _ in slots:
            if runs and runs[-1][0] == row:
                runs[-1][1] += 1
            else:
                runs.append([row, 1])
        if len({n for _, n in runs}) == 1:  # the same count for every prompt: one call samples them all
            prompt_rows, n = [row for row, _ in runs], runs[0][1]
        else:  # a group cut at the share's edge: one completion per (repeated) prompt
            prompt_rows, n = [row for row, _, _ in slots], 1
        prompt_ids = [self.encoder.row(i, self.rows[i]["prompt"]) for i in prompt_rows]
        vision = None if self.vision is None else self.vision.encoder.vision_for(prompt_rows)
        if self.weights_changed:
            self._sync_weights()
        extra: dict[str, Any] = {} if vision is None else {"vision": vision}
        if self.backend.seeded:  # slots are prompt by prompt, as the completions of the call
            extra["seeds"] = [_completion_seed(self.ctx.seed, number) for _, _, number in slots]
        with self.ctx.timer("generation"), self.ctx.autocast(), self._generation_weights():
            out = self.backend.generate(prompt_ids, n, self.sampling, **extra)
        if out.policy_version is None:  # an in-process sampler is the policy itself
            out.policy_version = self.ctx.step
        self.counters.generations += 1
        ids = out.completion_id_lists()
        self.counters.completions_sampled += len(ids)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        rows = [row for row, _, _ in slots]
        prompts = [self.rows[i]["prompt"] for i in rows]
        columns = {c: [self.rows[i].get(c) for i in rows] for c in self.columns}
        per_func = []
        for func in self.reward_funcs:
            values = func(prompts=prompts, completions=texts, completion_ids=ids, **columns)
            per_func.append([math.nan if v is None else float(v) for v in values])
        rewards = torch.tensor(per_func, dtype=torch.float32).T.reshape(len(ids), len(self.reward_funcs))
        row_vision = None if vision is None else [v for v in vision for _ in range(n)]
        return Sampled(out, ids, texts, prompts, rewards, out.is_truncated.tolist(), row_vision)

    def _sync_weights(self) -> None:
        """Give the sampler the policy's current weights; every rank takes part. With several processes the
        main one sends them (ZeRO-3 gathers the full weights collectively first) while the others wait at
        a barrier, so every rank's next generation has the same policy version."""
        self.weights_changed = False
        if not self.cfg.use_vllm:
            self.backend.sync_weights(self.model, version=self.ctx.step)  # the sampler is the policy
            return
        zero = self.stepper.zero if self.stepper is not None else None
        with self.ctx.timer("weight_sync"), zero.gathered() if zero is not None else contextlib.nullcontext():
            if not distributed.current().is_main:
                merge_round_trip(self.model)
            self.backend.sync_weights(self.model, version=self.ctx.step)
        distributed.barrier()

    def _generation_weights(self) -> contextlib.AbstractContextManager[Any]:
        """Generation runs a different number of forwards on each rank, which ZeRO-3's partitioned
        parameters (gathered collectively per forward) cannot: it runs on the gathered full weights.
        vLLM samples with its own copy of the weights."""
        zero = self.stepper.zero if self.stepper is not None else None
        if zero is None or self.cfg.use_vllm:
            return contextlib.nullcontext()
        return zero.for_generation()

    def generate(self) -> ScoredRollout:
        """One scored generation batch, DAPO dynamic sampling and GFPO filtering included."""
        if not _option(self.cfg, "dynamic_sampling"):
            return self._score(self._sample(self._take_slots(self.plan.prompts_per_generation)), {})
        return self._score(*self._dynamic_sampling())

    def _dynamic_sampling(self) -> tuple[Sampled, dict[str, float]]:
        """DAPO dynamic sampling: sample until the batch has only groups whose accuracy differs, up to
        `max_dynamic_sampling_rounds` rounds. With several processes each rank samples its share of a
        round and every rank gathers the round's completions, so all ranks choose the same groups; each
        then keeps its share of the chosen batch (a round samples at least one completion per rank)."""
        G, aggregation = self.plan.num_generations, self.objective.aggregation
        need, world = self.plan.prompts_per_generation, self.plan.world
        kept: list[Sampled] = []
        spare: list[Sampled] = []
        have, rounds, groups_seen, zero_std_seen, padded = 0, 0, 0, 0, 0
        while have < need:
            rounds += 1
            prompts = max(need - have, math.ceil(world / G))
            part = self._sample(self._take_slots(prompts))
            if world > 1:
                part = Sampled.concat(distributed.all_gather_objects(part.cpu()), self.pad_id)
            combined = adv_lib.combine_rewards(part.rewards, self.reward_weights, aggregation, G)
            flat = adv_lib.zero_variance_groups(combined, G).tolist()
            groups_seen += len(flat)
            zero_std_seen += sum(flat)
            solved = adv_lib.accuracy_rewards(part.rewards, self.reward_names, self.reward_weights)
            flat = adv_lib.zero_variance_groups(solved, G).tolist()
            good = [g for g, f in enumerate(flat) if not f][: need - have]
            bad = [g for g, f in enumerate(flat) if f]
            if good:
                kept.append(part.select(_group_rows(good, G)))
                have += len(good)
            if bad:
                spare.append(part.select(_group_rows(bad, G)))
            if rounds >= _option(self.cfg, "max_dynamic_sampling_rounds") and have < need:
                # Out of rounds: fill up with groups of equal accuracy to keep the batch size, and say so.
                padded = need - have
                for extra in spare:
                    take = min(need - have, len(extra) // G)
                    if take:
                        kept.append(extra.select(range(take * G)))
                        have += take
                self.ctx.events.log(
                    f"dynamic sampling: {padded} of {need} groups have equal accuracy after {rounds} rounds "
                    "(max_dynamic_sampling_rounds); the batch is filled with them and they add no policy gradient",
                    level="warning",
                )
                break
        metrics = {
            "rollout/frac_reward_zero_std": zero_std_seen / max(1, groups_seen),
            "rollout/dynamic_sampling_rounds": float(rounds),
            "rollout/dynamic_sampling_padded_groups": float(padded),
        }
        batch = Sampled.concat(kept, self.pad_id)
        if world > 1:
            batch = batch.select(distributed.shard(list(range(len(batch))), distributed.current()))
        return batch, metrics

    def _score(self, part: Sampled, metrics: dict[str, float]) -> ScoredRollout:
        """Loss mask, log-probs, advantages (after the GFPO filter, if any) and metrics of one batch.

        Group and batch statistics use the whole generation batch: the rows of every rank are gathered
        (rewards, lengths, truncation; rank order is the global order), every rank computes the same
        advantages and keeps its own rows'. So groups may straddle ranks, and the rollout metrics are
        exact global values."""
        cfg, group = self.cfg, self.plan.num_generations
        rewards, offset = distributed.gather_rows(part.rewards)
        lengths = torch.tensor([len(i) for i in part.ids], dtype=torch.long)
        all_lengths, _ = distributed.gather_rows(lengths)
        truncated, _ = distributed.gather_rows(torch.tensor(part.truncated, dtype=torch.bool))
        combined = adv_lib.combine_rewards(rewards, self.reward_weights, self.objective.aggregation, group)
        if "rollout/frac_reward_zero_std" not in metrics:
            zero_std = adv_lib.zero_variance_groups(combined, group)
            metrics = {**metrics, "rollout/frac_reward_zero_std": float(zero_std.float().mean())}
        remains = _option(cfg, "num_remains_in_group")
        if remains is not None:
            # The filter ranks each group's completions; with several processes it needs whole groups on
            # every rank (refused otherwise), so every rank keeps the same number of rows.
            keep = adv_lib.gfpo_keep_mask(group, remains, all_lengths, combined, cfg.group_filter)
            mine = keep[offset : offset + len(part)].nonzero().squeeze(-1)
            metrics = {
                **metrics,
                "rollout/sampled_completion_length_mean": float(all_lengths.float().mean()),
            }
            offset = int(keep[:offset].sum())
            part, group = part.select(mine.tolist()), remains
            rewards, combined, all_lengths, truncated = (
                rewards[keep],
                combined[keep],
                all_lengths[keep],
                truncated[keep],
            )
        out, device = part.out, self.ctx.device
        lengths = [len(i) for i in part.ids]  # this rank's rows
        loss_mask = out.completion_mask.clone()
        if cfg.mask_truncated_completions:
            loss_mask[out.is_truncated.to(loss_mask.device)] = 0
        rollout = ScoredRollout(
            prompt_ids=out.prompt_ids.to(device),
            prompt_mask=out.prompt_mask.to(device),
            completion_ids=out.completion_ids.to(device),
            completion_mask=out.completion_mask.to(device),
            loss_mask=loss_mask.to(device),
            advantages=torch.zeros(len(lengths), device=device),  # set below, once log-probs are known
            prompt_lengths=out.prompt_mask.sum(dim=1).tolist(),
            completion_lengths=lengths,
            loss_tokens=[
                0 if cfg.mask_truncated_completions and t else n
                for n, t in zip(lengths, part.truncated, strict=True)
            ],
            sampling_logps=None if out.sampling_logps is None else out.sampling_logps.to(device),
            policy_version=self.ctx.step if out.policy_version is None else out.policy_version,
            vision=part.vision,
        )
        if self._share_prompts():
            rollout.prompt_keys = _prompt_keys(out.prompt_ids, rollout.prompt_lengths)
        self._fill_logps(rollout)
        if rollout.old_logps is not None and rollout.sampling_logps is not None:
            lc = self.loss_cfg
            metrics = {
                **metrics,
                **vllm_is_metrics(
                    rollout.old_logps,
                    rollout.sampling_logps,
                    rollout.loss_mask,
                    lc.vllm_is_mode,
                    lc.vllm_is_clip_min,
                    lc.vllm_is_clip_max,
                ),
            }
        advantages, objective_metrics = self.objective.advantages(combined, group, rollout)
        rollout.advantages = advantages[offset : offset + len(rollout)].float().to(device)
        self.counters.completions_scored += len(rollout)
        rollout.metrics = {
            **metrics,
            **self._rollout_metrics(rewards, all_lengths, truncated),
            **objective_metrics,
        }
        mine = combined[offset : offset + len(rollout)].tolist()
        source = None if self.vision is None else self.vision.source
        rollout.samples = [
            {
                "prompt": display_prompt(p),
                "completion": t,
                "reward": None if math.isnan(r) else r,
                **({} if source is None else sample_images(p, source)),
            }
            for p, t, r in zip(part.prompts, part.texts, mine, strict=True)
        ]
        return rollout

    def _rollout_metrics(
        self, rewards: torch.Tensor, lengths: torch.Tensor, truncated: torch.Tensor
    ) -> dict[str, float]:
        """Rollout statistics of the whole (gathered) generation batch."""
        from engine.functional import nanmean

        lengths = lengths.double()
        m = {
            **{k: float(v) for k, v in adv_lib.reward_stats(rewards, self.reward_weights).items()},
            "rollout/completion_length_mean": float(lengths.mean()),
            "rollout/completion_length_min": float(lengths.min()),
            "rollout/completion_length_max": float(lengths.max()),
            "rollout/clipped_ratio": float(truncated.double().mean()),
        }
        for k, func in enumerate(self.reward_funcs):
            m[f"rollout/rewards/{func.name}_mean"] = float(nanmean(rewards[:, k]))
        return m

    def _share_prompts(self) -> bool:
        """Whether the log-prob forwards may run each distinct prompt once; why not is said once."""
        zero = self.stepper.zero if self.stepper is not None else None
        models = [self.model] + ([self.reference.model] if self.reference is not None else [])
        reasons = [
            "image prompts carry pixel inputs per row" if self.vision is not None else None,
            "ZeRO-3 needs every rank to run the same forwards"
            if zero is not None and zero.stage == 3
            else None,
            *(unsupported(m) for m in models),
        ]
        reason = next((r for r in reasons if r is not None), None)
        if reason is not None and not self._sharing_said:
            self._sharing_said = True
            self.ctx.events.log(
                f"log-prob forwards run every row's prompt (no shared-prompt forward): {reason}"
            )
        return reason is None

    def _split(self, rollout: ScoredRollout, rows: list[int], parts: int) -> list[list[int]]:
        """`rows` of `rollout` in `parts` micro-batches of similar length, groups kept together when
        prompts are shared."""
        lengths = [rollout.total_length(r) for r in range(len(rollout))]
        if rollout.prompt_keys is None:
            return split_by_length(rows, lengths, parts)
        return split_by_prompt(rows, rollout.prompt_keys, lengths, parts)

    def _chunks(self, rollout: ScoredRollout) -> Iterator[list[int]]:
        rows = list(range(len(rollout)))
        yield from self._split(rollout, rows, math.ceil(len(rows) / self.plan.batch_size))

    def _fill_logps(self, rollout: ScoredRollout) -> None:
        """Old and reference log-probs for every row, in inference mode, when they are needed."""
        if not self.plan.needs_old_logps and self.reference is None:
            return
        shape = rollout.completion_ids.shape
        old = (
            torch.zeros(shape, dtype=torch.float32, device=self.ctx.device)
            if self.plan.needs_old_logps
            else None
        )
        ref = (
            torch.zeros(shape, dtype=torch.float32, device=self.ctx.device)
            if self.reference is not None
            else None
        )
        for rows in self._chunks(rollout):
            mb = rollout.micro_batch(rows)
            index = torch.as_tensor(rows, dtype=torch.long, device=self.ctx.device)
            if old is not None:
                with self.ctx.timer("old_logps"), torch.inference_mode(), self.ctx.autocast():
                    lp, _ = self._logps(self.model, mb, with_entropy=False)
                old[index, : mb.logits_to_keep] = lp.clone()
                self.counters.old_logp_forwards += 1
            if ref is not None:
                with self.ctx.timer("reference"), self.reference.use() as ref_model, self.ctx.autocast():
                    lp, _ = self._logps(ref_model, mb, with_entropy=False)
                ref[index, : mb.logits_to_keep] = lp.clone()
                self.counters.ref_logp_forwards += 1
        rollout.old_logps, rollout.ref_logps = old, ref

    def _logps(
        self, model: Any, mb: MicroBatch, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shared = mb.shared if mb.vision is None else None
        width, keep = mb.input_ids.shape[1], mb.logits_to_keep
        prompts = None if shared is None else shared.num_prompts
        self.counters.decoder_tokens += decoder_tokens(mb.num_rows, width, keep, prompts)
        if shared is not None:
            self.counters.shared_prompt_forwards += 1
            out = shared_prompt_stats(
                model,
                mb.input_ids,
                mb.attention_mask,
                keep,
                shared,
                temperature=self.cfg.temperature,
                with_entropy=with_entropy,
                mask=mb.loss_mask,
            )
            return out["logps"], out.get("entropies")
        return token_logprobs(
            model,
            mb.input_ids,
            mb.attention_mask,
            logits_to_keep=mb.logits_to_keep,
            temperature=self.cfg.temperature,
            with_entropy=with_entropy,
            mask=mb.loss_mask,
            vision=mb.vision,
        )

    # ---------------------------------------------------------------------------------------- batching

    def next_slice(self) -> Slice:
        max_lag = _option(self.cfg, "max_policy_lag")
        while max_lag is not None and self.queue and self._lag(self.queue[0].rollout) > max_lag:
            self.queue.pop(0)  # sampled by a policy older than the spec allows: never trained on
            self.counters.stale_slices_dropped += 1
        if not self.queue:
            self.ctx.check_stop()
            rollout = self.generate()
            self.last_rollout = rollout
            rows = torch.randperm(len(rollout)).tolist()  # global torch RNG: restored on resume
            slices = [
                Slice(rollout, list(map(int, part)))
                for part in _split_even(rows, self.plan.steps_per_generation)
            ]
            self.queue = [s for _ in range(self.plan.num_iterations) for s in slices]
        return self.queue.pop(0)

    def step_micro_batches(
        self,
    ) -> tuple[list[tuple[ScoredRollout, list[int]]], GlobalCounts, list[ScoredRollout]]:
        """The GA micro-batches of one optimizer step, re-cut by length per generation, and their counts."""
        slices = [self.next_slice() for _ in range(self.plan.grad_accum)]
        by_rollout: dict[int, tuple[ScoredRollout, list[int], int]] = {}
        for s in slices:
            r, rows, n = by_rollout.get(id(s.rollout), (s.rollout, [], 0))
            by_rollout[id(s.rollout)] = (r, rows + s.rows, n + 1)
        micro, tokens, sequences = [], 0, 0
        for rollout, rows, n_slices in by_rollout.values():
            tokens += sum(rollout.loss_tokens[r] for r in rows)
            sequences += len(rows)
            micro.extend((rollout, part) for part in self._split(rollout, rows, n_slices) if part)
        rollouts = [r for r, _, _ in by_rollout.values()]
        counts = distributed.all_reduce_counts(GlobalCounts(num_tokens=tokens, num_sequences=sequences))
        counts = self._entropy_step_counts(micro, counts)
        return micro, counts, rollouts

    def _entropy_step_counts(
        self, micro: list[tuple[ScoredRollout, list[int]]], counts: GlobalCounts
    ) -> GlobalCounts:
        """An entropy bonus over an entropy mask is the mean entropy of the tokens the mask keeps in the whole
        step: one no-grad forward per micro-batch gives the step's entropies, hence its threshold and that
        count, so the bonus does not depend on how the step is cut. Other jobs skip the extra forwards."""
        quantile = _option(self.cfg, "top_entropy_quantile")
        bonus = _option(self.cfg, "entropy_coef") != 0.0 or self.adaptive_entropy
        if quantile >= 1.0 or not bonus:
            return counts
        active = []
        with torch.no_grad(), self.ctx.autocast():
            for rollout, rows in micro:
                mb = rollout.micro_batch(rows)
                _, entropies = self._logps(self.model, mb, with_entropy=True)
                active.append(entropies.float()[mb.loss_mask.bool()])
        step, _ = distributed.gather_rows(torch.cat(active))  # every rank's kept-token entropies
        ones = torch.ones_like(step)
        threshold = entropy_threshold(step, ones, quantile)
        kept = high_entropy_mask(step, ones, quantile, threshold).sum()
        return dataclasses.replace(counts, entropy_threshold=threshold, num_entropy_tokens=kept)

    def _micro_entropy_threshold(
        self, entropies: torch.Tensor, mb: MicroBatch, counts: GlobalCounts
    ) -> GlobalCounts:
        """Several processes: the micro-step's `top_entropy_quantile` threshold over the loss-carrying
        tokens of this micro-step on every rank (one process takes it over its micro-batch)."""
        quantile = _option(self.cfg, "top_entropy_quantile")
        if quantile >= 1.0:
            return counts
        active, _ = distributed.gather_rows(entropies.detach().float()[mb.loss_mask.bool()])
        threshold = entropy_threshold(active, torch.ones_like(active), quantile)
        return dataclasses.replace(counts, entropy_threshold=threshold.to(entropies.device, entropies.dtype))

    # -------------------------------------------------------------------------------------------- loop

    def _lag(self, rollout: ScoredRollout) -> int:
        """Optimizer steps taken since the policy that sampled `rollout` (0: on-policy)."""
        return self.ctx.step - rollout.policy_version

    def micro_step(self, mb: MicroBatch, counts: GlobalCounts, metrics: StepMetrics) -> torch.Tensor:
        with self.ctx.autocast():
            logps, entropies = self._logps(self.model, mb, with_entropy=self.need_entropy)
        self.counters.policy_forwards += 1
        if entropies is not None and counts.entropy_threshold is None and self.plan.world > 1:
            counts = self._micro_entropy_threshold(entropies, mb, counts)
        loss_cfg = self.loss_cfg
        if self.adaptive_entropy:
            applied = self.state.entropy_coef if self.state.last_entropy <= self.cfg.entropy_target else 0.0
            loss_cfg = dataclasses.replace(loss_cfg, entropy_coef=applied)
        batch = PolicyBatch(
            logps=logps,
            mask=mb.loss_mask,
            advantages=mb.advantages,
            old_logps=mb.old_logps,
            ref_logps=mb.ref_logps,
            sampling_logps=mb.sampling_logps,
            entropies=entropies,
        )
        out = policy_loss(batch, loss_cfg, counts)
        if self.adaptive_entropy and "policy/entropy" in out.metrics:
            self._step_entropy = self._step_entropy + out.metrics["policy/entropy"]
        for name, value in out.metrics.items():
            if name != "policy/loss":
                metrics.add_sum(name, value)
        extra = self.auxiliary_loss(mb, logps, entropies, counts, metrics)
        return out.loss if extra is None else out.loss + extra

    def auxiliary_loss(
        self,
        mb: MicroBatch,
        logps: torch.Tensor,
        entropies: torch.Tensor | None,
        counts: GlobalCounts,
        metrics: StepMetrics,
    ) -> torch.Tensor | None:
        """A term added to the policy loss by a variant (PAPO's perception terms); None here."""
        return None

    def train(self) -> Path:
        try:
            return self._train()
        finally:
            self.backend.close()  # a rollout server started for this job stops with it

    def _train(self) -> Path:
        ctx, cfg, plan = self.ctx, self.cfg, self.plan
        micro_per_epoch = math.ceil(len(self.rows) / plan.prompts_per_generation) * plan.steps_per_generation
        total = total_optimizer_steps(cfg, micro_per_epoch * plan.num_iterations)
        reference = self.reference.model if self.reference is not None else None
        saved_with = self.tokenizer if self.vision is None else self.vision.processor  # processor: VLMs
        stepper = self.stepper = OptimizerStep(ctx, self.model, saved_with, total, reference=reference)
        self._resume(stepper)
        ctx.events.log(
            f"{self.spec.algorithm}: {plan.prompts_per_generation} prompts x {plan.num_generations} "
            "generations per generation, "
            f"{plan.steps_per_generation} slices of {plan.batch_size}, {plan.grad_accum} micro-steps per "
            f"optimizer step, {total} steps; old log-probs {'on' if plan.needs_old_logps else 'off (on-policy)'}, "
            f"reference {'on' if self.reference is not None else 'off (beta=0)'}"
        )
        metrics = StepMetrics(ctx.device)
        self.model.train()
        masked_steps, steps_run = 0, 0
        while not stepper.done:
            tokens_before = self.counters.decoder_tokens
            micro, counts, rollouts = self.step_micro_batches()
            steps_run += 1
            if counts.num_tokens == 0:  # no token left in the loss: loss and gradient are 0
                masked_steps += 1
                if masked_steps == 1:
                    ctx.events.log(_masked_update_warning(cfg, stepper.step_count + 1), level="warning")
            for rollout, rows in micro:
                ctx.check_stop()
                with ctx.timer("forward"):
                    loss = self.micro_step(rollout.micro_batch(rows), counts, metrics)
                stepper.backward(loss)
                metrics.add_sum("train/loss", loss.detach())
            stepper.step(metrics)
            self.weights_changed = True
            metrics.add_mean("train/decoder_tokens", float(self.counters.decoder_tokens - tokens_before), 1.0)
            for rollout in rollouts:
                for name, value in rollout.metrics.items():
                    metrics.add_mean(name, value, 1.0)
                metrics.add_mean(
                    "rollout/policy_lag", float(stepper.step_count - 1 - rollout.policy_version), 1.0
                )
            metrics.end_step()
            self._after_step()
            if self.adaptive_entropy and stepper.log_due:
                metrics.set("policy/entropy_coef", self.state.entropy_coef)
            if (
                stepper.report(metrics, self.sampler.epoch_float)
                and cfg.log_completions
                and self.last_rollout is not None
                and cfg.num_completions_to_print != 0
            ):
                n = cfg.num_completions_to_print or len(self.last_rollout.samples)
                ctx.events.samples(stepper.step_count, self.last_rollout.samples[:n])
            stepper.save_due(self.sampler.position, dataclasses.asdict(self.state))
        if masked_steps:
            ctx.events.log(
                f"{masked_steps} of {steps_run} optimizer steps had every completion masked out of the loss "
                "(loss 0, gradient 0)" + ("; the model did not change" if masked_steps == steps_run else ""),
                level="warning",
            )
        c = self.counters
        ctx.events.log(
            f"{self.spec.algorithm} counters: generations={c.generations} policy_forwards={c.policy_forwards} "
            f"old_logp_forwards={c.old_logp_forwards} ref_logp_forwards={c.ref_logp_forwards} "
            f"completions_sampled={c.completions_sampled} completions_scored={c.completions_scored} "
            f"stale_slices_dropped={c.stale_slices_dropped} shared_prompt_forwards={c.shared_prompt_forwards} "
            f"decoder_tokens={c.decoder_tokens}"
        )
        return stepper.save_final()

    def _after_step(self) -> None:
        """Adaptive entropy: move the bonus coefficient towards the entropy target."""
        if not self.adaptive_entropy:
            return
        cfg = self.cfg
        # One extra host transfer per step: the controller needs this step's token-mean entropy
        # (the micro-batch contributions sum to it).
        value = float(self._step_entropy)
        self._step_entropy = 0.0
        self.state.last_entropy = value
        c, delta = self.state.entropy_coef, cfg.entropy_coef_delta
        if value <= cfg.entropy_target:
            self.state.entropy_coef = min(c + delta, cfg.entropy_coef_max)
        else:
            self.state.entropy_coef = max(c - delta, cfg.entropy_coef_min)

    def _resume(self, stepper: OptimizerStep) -> None:
        state = stepper.resume()
        if state is None:
            return
        if state.get("data_position"):
            self.sampler.restore(state["data_position"])
        saved = state.get("algorithm_state") or {}
        self.state = GRPOState(**{k: v for k, v in saved.items() if k in GRPOState.__dataclass_fields__})
        self.weights_changed = True


def _masked_update_warning(cfg: Any, step: int) -> str:
    why = (
        f"every completion reached max_completion_length={cfg.max_completion_length} and "
        "mask_truncated_completions leaves truncated completions out of the loss"
        if cfg.mask_truncated_completions
        else "no completion token is left in the loss"
    )
    todo = (
        "raise config.max_completion_length, turn config.mask_truncated_completions off, or use a model "
        "that ends its answers"
        if cfg.mask_truncated_completions
        else "check the completions in the samples"
    )
    return f"step {step}: every update was masked: {why}, so loss and gradient are 0 and the model does not change; {todo}"


def train(spec: Any, ctx: TrainContext) -> Path:
    """Run a GRPO (or GFPO) job; returns DIR/final."""
    return GRPOTrainer(spec, ctx).train()


# ---------------------------------------------------------------------------------------------- helpers


def _eos_ids(tokenizer: Any) -> tuple[int, ...]:
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if im_end is not None and im_end not in ids:
        ids.append(int(im_end))
    if not ids:
        raise ValueError(
            "the tokenizer has no EOS token (eos_token or <|im_end|>); generation could never stop"
        )
    return tuple(ids)


def _completion_seed(job_seed: int, number: int) -> int:
    """The sampling seed of the job's `number`-th completion: distinct per completion and per job seed."""
    return (job_seed * 2**32 + number) % 2**63


def _prompt_keys(prompt_ids: torch.Tensor, lengths: list[int]) -> list[int]:
    """One key per row, equal for rows with equal prompt tokens (one host transfer per generation)."""
    keys: dict[tuple[int, ...], int] = {}
    rows = prompt_ids.tolist()
    return [
        keys.setdefault(tuple(ids[len(ids) - n :]), len(keys)) for ids, n in zip(rows, lengths, strict=True)
    ]


def _group_rows(groups: list[int], G: int) -> list[int]:
    return [g * G + j for g in groups for j in range(G)]


def _split_even(rows: list[int], parts: int) -> list[list[int]]:
    base, extra = divmod(len(rows), parts)
    out, start = [], 0
    for k in range(parts):
        size = base + (1 if k < extra else 0)
        out.append(rows[start : start + size])
        start += size
    return [p for p in out if p]


def _cast_lm_head_to_fp32(model: Any) -> None:
    """`cast_lm_head_to_fp32`: run the LM head in float32 (autocast off, inputs and weights upcast) without
    changing the stored weights (so tied embeddings keep their dtype)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            bias = None if head.bias is None else head.bias.float()
            return torch.nn.functional.linear(hidden.float(), head.weight.float(), bias)

    head.forward = forward
