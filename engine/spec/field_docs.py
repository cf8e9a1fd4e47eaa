"""One-line descriptions of the spec's fields, for the published JSON schema (OpenAPI, launch forms).

    describe(defs)   # fill every property of a JSON-schema `$defs`/components mapping that has no description

A description given on the field itself (`Field(description=...)`) always wins. Keys are field names, or
`Model.field` where one name means different things in different models (`beta`). Torch-free; a test
checks that every field of every spec model ends up described.
"""

from __future__ import annotations

from typing import Any

_TRAINING = {
    "num_train_epochs": "passes over the dataset when max_steps is -1",
    "per_device_train_batch_size": "sequences (or prompts' completions, online) per micro-batch",
    "per_device_eval_batch_size": "sequences per evaluation micro-batch",
    "gradient_accumulation_steps": "micro-batches accumulated into one optimizer step",
    "lr_scheduler_type": "learning-rate schedule after warmup",
    "warmup_ratio": "fraction of the optimizer steps spent warming up (when warmup_steps is 0)",
    "warmup_steps": "optimizer steps of linear warmup (overrides warmup_ratio when > 0)",
    "weight_decay": "AdamW decoupled weight decay (not applied to biases and norms)",
    "adam_beta1": "AdamW first-moment decay",
    "adam_beta2": "AdamW second-moment decay",
    "adam_epsilon": "AdamW denominator epsilon",
    "max_grad_norm": "clip the global gradient norm to this value (0: no clipping)",
    "optim": "optimizer",
    "seed": "random seed for initialisation, shuffling and sampling",
    "logging_steps": "log metrics every N optimizer steps (and at the last one)",
    "save_total_limit": "keep at most this many checkpoints (oldest removed first)",
    "fp16": "float16 autocast over float32 weights with loss scaling, GPU only (precision 'fp16-autocast')",
    "gradient_checkpointing": "recompute activations in backward to save memory",
    "disable_dropout": "turn dropout off in the trained (and reference) model",
    "shuffle_dataset": "shuffle rows every epoch",
    "dataloader_num_workers": "data-loading worker processes",
    "report_to": "accepted for TRL compatibility; papertrain always reports to its events and MLflow",
}
_SEQUENCES = {
    "max_length": "truncate each tokenized sequence (prompt + completion) to this many tokens; null: no limit",
    "max_prompt_length": "truncate each prompt to this many tokens (kept from the end); null: no limit",
    "max_completion_length": "truncate or stop completions at this many tokens",
    "truncation_mode": "which end of an over-long sequence is cut",
    "padding_free": "pack the micro-batch without padding tokens",
    "pad_to_multiple_of": "pad sequence lengths up to a multiple of this",
    "precompute_ref_log_probs": "compute the reference log-probs once before training (frees the reference model)",
    "precompute_ref_batch_size": "batch size of that precomputation",
    "sync_ref_model": "move the reference model toward the policy during training (TR-DPO)",
    "ref_model_mixup_alpha": "weight of the policy when the reference is moved: ref = alpha*policy + (1-alpha)*ref",
    "ref_model_sync_steps": "move the reference every N optimizer steps",
}
_SFT = {
    "packing": "concatenate examples into full-length sequences",
    "packing_strategy": "how examples are packed (best-fit decreasing or wrapped)",
    "completion_only_loss": "train only on completion tokens of prompt/completion rows",
    "assistant_only_loss": "train only on assistant turns of conversations",
    "dataset_text_field": "column holding plain text rows",
    "eos_token": "end-of-sequence token appended to each example (default: the tokenizer's)",
    "bema": "BEMA weight stabilisation (bias-corrected EMA of the weights); null: off",
    "SFTConfig.loss_type": "nll (cross-entropy), chunked_nll, or dft (dynamic fine-tuning: token loss x its probability)",
    "GKDConfig.loss_type": "the student's SFT loss type on the data",
    "GOLDConfig.loss_type": "the student's SFT loss type on the data",
}
_PREFERENCE = {
    "DPOConfig.beta": "strength of the implicit KL constraint to the reference (the DPO temperature)",
    "DPOConfig.loss_type": "preference loss (sigmoid = DPO, ipo, hinge, robust, ...); a list combines several",
    "loss_weights": "weight of each loss when loss_type is a list",
    "discopop_tau": "temperature of the DiscoPOP loss",
    "f_divergence_type": "divergence regularising the policy (reverse KL = standard DPO)",
    "f_alpha_divergence_coef": "alpha of the alpha-divergence",
    "ld_alpha": "LD-DPO: weight of the verbose part of the longer response (null: off)",
    "use_weighting": "WPO: weight each pair by its probability under the policy",
    "rpo_alpha": "RPO: weight of the NLL term on the chosen response (null: off)",
    "reference_free": "compare against a uniform reference instead of a reference model",
    "label_smoothing": "probability that a preference label is flipped (robust / conservative DPO)",
    "KTOConfig.beta": "strength of the KL constraint to the reference",
    "KTOConfig.loss_type": "kto or apo_zero_unpaired",
    "desirable_weight": "loss weight of desirable examples",
    "undesirable_weight": "loss weight of undesirable examples",
    "BCOConfig.beta": "strength of the KL constraint to the reference",
    "prompt_sample_size": "prompts sampled to fit the density-ratio classifier",
    "min_density_ratio": "lower clip of the density ratio",
    "max_density_ratio": "upper clip of the density ratio",
    "CPOConfig.beta": "temperature of the preference loss",
    "CPOConfig.loss_type": "sigmoid (CPO), hinge, ipo, simpo or alphapo",
    "cpo_alpha": "weight of the NLL term on the chosen response",
    "simpo_gamma": "SimPO target reward margin",
    "CPOConfig.alpha": "AlphaPO reward-shape parameter (0: SimPO)",
    "center_rewards_coefficient": "weight of the penalty pushing rewards toward zero mean (null: off)",
}
_ONLINE = {
    "num_generations": "completions sampled per prompt (the group)",
    "num_generations_eval": "completions per prompt at evaluation (default: num_generations)",
    "generation_batch_size": "completions per generation round (default: batch x steps_per_generation)",
    "steps_per_generation": "micro-batches trained on each generation round (default: gradient_accumulation_steps)",
    "num_iterations": "optimisation passes over each generation (mu); > 1 makes updates off-policy",
    "temperature": "sampling temperature",
    "top_p": "nucleus sampling mass",
    "top_k": "sample among the k most likely tokens (null/0: all)",
    "min_p": "drop tokens below min_p x the top probability (null: off)",
    "repetition_penalty": "penalty on repeated tokens while sampling (1: none)",
    "mask_truncated_completions": "leave completions that hit max_completion_length out of the loss",
    "reward_weights": "weight of each reward function (default: all 1)",
    "use_vllm": "generate with vLLM (GPU workers)",
    "vllm_mode": "colocate: vLLM inside the training process; server: a separate vLLM server",
    "vllm_gpu_memory_utilization": "GPU memory fraction vLLM may use (colocate)",
    "vllm_importance_sampling_correction": "correct for the vLLM sampler differing from the trained policy",
    "vllm_importance_sampling_mode": "how that correction truncates or masks tokens or sequences",
    "vllm_importance_sampling_clip_max": "upper cap of the correction ratio",
    "vllm_importance_sampling_clip_min": "lower bound of the correction ratio (masking modes)",
    "log_completions": "emit sample completions as events",
    "num_completions_to_print": "samples per logging step",
    "remove_unused_columns": "drop dataset columns the rewards do not read",
    "GRPOConfig.beta": "KL coefficient to the reference model (0: no reference model is loaded)",
    "GRPOConfig.loss_type": "policy loss aggregation: grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo",
    "epsilon": "lower clipping range of the importance ratio",
    "epsilon_high": "upper clipping range (default: epsilon); DAPO's clip-higher",
    "importance_sampling_level": "importance ratio per token, per sequence (GSPO) or both",
    "scale_rewards": "divide advantages by the group's, the batch's or no standard deviation",
    "multi_objective_aggregation": "sum rewards then normalise, or normalise each then sum",
    "top_entropy_quantile": "train only on the highest-entropy fraction of tokens (1: all)",
    "use_bias_correction_kl": "unbiased KL estimate using the importance ratio",
    "off_policy_mask_threshold": "mask sequences whose policy has drifted beyond this KL (null: off)",
    "sapo_temperature_pos": "SAPO soft-gate temperature for positive advantages",
    "sapo_temperature_neg": "SAPO soft-gate temperature for negative advantages",
    "vespo_k_pos": "VESPO shape parameter k for positive advantages",
    "vespo_lambda_pos": "VESPO scale parameter lambda for positive advantages",
    "vespo_k_neg": "VESPO shape parameter k for negative advantages",
    "vespo_lambda_neg": "VESPO scale parameter lambda for negative advantages",
    "entropy_coef": "weight of an entropy bonus in the loss (0: off)",
    "use_adaptive_entropy": "adapt entropy_coef toward entropy_target",
    "entropy_coef_min": "lower bound of the adapted coefficient",
    "entropy_coef_max": "upper bound of the adapted coefficient",
    "entropy_coef_delta": "step of each adaptation",
    "entropy_target": "entropy the adaptation aims for",
    "cast_lm_head_to_fp32": "compute the output layer in float32",
    "max_dynamic_sampling_rounds": "generation rounds dynamic sampling may use to refill dropped groups",
    "group_filter": "GFPO: metric used to keep completions within a group",
    "num_remains_in_group": "GFPO: completions kept per group",
    "perception_loss_weight": "PAPO: weight of the perception (masked-image KL) loss",
    "mask_ratio": "PAPO: fraction of image patches masked",
    "mask_type": "PAPO: how patches are masked",
    "der_loss_weight1": "PAPO: weight of the first double-entropy regulariser",
    "der_loss_weight2": "PAPO: weight of the second double-entropy regulariser",
    "rkl_advantage": "MiniLLM: add the reverse-KL term to the advantage",
    "single_step_decomposition": "MiniLLM: single-step decomposition of the policy gradient",
    "kd_temperature": "MiniLLM: distillation temperature",
    "MiniLLMConfig.gamma": "MiniLLM: discount of future rewards",
    "length_normalization": "MiniLLM: normalise the reward by completion length",
    "RLOOConfig.beta": "KL penalty subtracted from each reward",
    "normalize_advantages": "standardise advantages over the batch",
    "reward_clip_range": "clip rewards to [-x, x] (null: no clipping)",
}
_DISTILL = {
    "lmbda": "fraction of batches trained on student-generated completions (on-policy)",
    "GKDConfig.beta": "interpolation of the generalised JSD (0: forward KL, 1: reverse KL)",
    "GOLDConfig.beta": "interpolation of the generalised JSD (0: forward KL, 1: reverse KL)",
    "GKDConfig.temperature": "sampling and distillation temperature",
    "GOLDConfig.temperature": "sampling and distillation temperature",
    "max_new_tokens": "tokens the student generates per on-policy completion",
    "seq_kd": "train on teacher-generated sequences (sequence-level KD)",
    "GOLDConfig.top_p": "nucleus sampling mass of student generation",
    "GOLDConfig.top_k": "top-k of student generation",
    "GOLDConfig.max_completion_length": "tokens per student completion",
    "GOLDConfig.num_generations": "completions per prompt",
    "GOLDConfig.generation_batch_size": "completions per generation round",
    "GOLDConfig.use_vllm": "generate with vLLM (GPU workers)",
    "use_uld_loss": "universal logit distillation across different tokenizers",
    "use_extended_uld": "extended ULD that aligns tokens across tokenizers",
    "uld_token_merge_strategy": "how token probabilities are merged when tokenizations differ",
    "uld_use_hybrid_loss": "KL on matched tokens, ULD on the rest",
    "uld_hybrid_matched_weight": "weight of the matched-token part",
    "uld_hybrid_unmatched_weight": "weight of the unmatched-token part",
    "uld_crossentropy_weight": "weight of the student's cross-entropy on the data",
    "uld_distillation_weight": "weight of the distillation term",
    "uld_student_temperature": "temperature of the student's distribution",
    "uld_teacher_temperature": "temperature of the teacher's distribution",
    "uld_skip_student_eos": "ignore the student's end token",
    "uld_skip_teacher_eos": "ignore the teacher's end token",
    "teacher_tokenizer_name_or_path": "the teacher's tokenizer when it differs from the student's",
}
_JOB = {
    "name": "display name of the job",
    "algorithm": "the algorithm: picks which job model (and config) applies",
    "dataset": "training data: exactly one of builtin, file_id, hf_id, path",
    "eval_dataset": "evaluation data (same forms as dataset); null: no evaluation",
    "hardware": "where the job runs (picks the worker queue)",
    "peft_config": "train a LoRA adapter instead of all weights; null: full fine-tuning",
    "distributed": "multi-process / DeepSpeed launch settings; null: one device",
    "reward_funcs": "the built-in rewards scoring each completion (weighted by config.reward_weights)",
    "config": "the algorithm's hyperparameters (TRL names and defaults)",
    "learning_rate": "peak learning rate of the optimizer",
    "eval_steps": "evaluate every N optimizer steps (null: at the end only)",
    "split": "dataset split to read",
    "config_name": "dataset configuration name (hub datasets)",
    "DatasetSpec.seed": "seed of a built-in set's generator",
    "accelerator": "cpu, or gpu (then gpus >= 1)",
    "gpus": "GPUs per job (picks the gpu-N worker queue)",
    "peft_type": "adapter type",
    "r": "LoRA rank",
    "lora_alpha": "LoRA scaling (update x lora_alpha / r)",
    "lora_dropout": "dropout on the LoRA input",
    "bias": "which biases are trained",
    "use_rslora": "rank-stabilised scaling lora_alpha / sqrt(r)",
    "modules_to_save": "modules trained fully besides the adapters",
    "distributed_type": "NO, MULTI_GPU (DDP) or DEEPSPEED",
    "num_processes": "processes (GPUs) per job",
    "deepspeed_config": "DeepSpeed settings (with distributed_type DEEPSPEED)",
    "mixed_precision": "mixed precision of the launcher",
    "zero_stage": "ZeRO stage: 0 off, 1 optimizer states, 2 + gradients, 3 + parameters sharded",
    "offload_optimizer_device": "offload optimizer states to the CPU",
    "offload_param_device": "offload parameters to the CPU (stage 3)",
    "zero3_init_flag": "build the model already sharded (stage 3)",
    "gradient_clipping": "DeepSpeed's gradient clipping (default: max_grad_norm)",
    "RewardFuncSpec.name": "the built-in reward",
    "ngram_size": "n-gram size of the repetition penalty",
    "max_penalty": "most negative value of the repetition penalty",
    "max_len": "length the cosine-scaled reward is measured against (default: max_completion_length)",
    "RewardFuncSpec.model": "reward model id or path (reward_model)",
    "url": "endpoint an http reward posts completions to (must be allow-listed on the server)",
    "timeout_s": "seconds an http reward may take",
    "update_freq": "BEMA: update the averaged weights every N steps",
    "ema_power": "BEMA: power of the EMA decay schedule",
    "bias_power": "BEMA: power of the bias-correction schedule",
    "lag": "BEMA: steps offset of the schedules",
    "update_after": "BEMA: start averaging after N steps",
    "multiplier": "BEMA: scale of the schedules",
    "min_ema_multiplier": "BEMA: lower bound of the EMA weight",
}
FIELD_DOCS: dict[str, str] = {**_TRAINING, **_SEQUENCES, **_SFT, **_PREFERENCE, **_ONLINE, **_DISTILL, **_JOB}

# Models that inherit a field and mean the same thing by it use their parent's description.
_PARENTS = {
    "GFPOConfig": "GRPOConfig",
    "PAPOConfig": "GRPOConfig",
    "MiniLLMConfig": "GRPOConfig",
    "GOLDConfig": "GKDConfig",
    "GKDConfig": "SFTConfig",
}


def description(model: str, field: str) -> str | None:
    name: str | None = model
    while name:
        if f"{name}.{field}" in FIELD_DOCS:
            return FIELD_DOCS[f"{name}.{field}"]
        name = _PARENTS.get(name)
    return FIELD_DOCS.get(field)


def describe(defs: dict[str, Any]) -> dict[str, Any]:
    """Fill missing property descriptions of the JSON-schema models in `defs` (in place); returns it."""
    for model, schema in defs.items():
        for field, prop in (schema.get("properties") or {}).items():
            if "description" not in prop:
                text = description(model, field)
                if text:
                    prop["description"] = text
    return defs
