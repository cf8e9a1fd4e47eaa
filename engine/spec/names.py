"""The public names users type, one `Literal` per family: the config fields are typed with these, and each
tuple is derived from its `Literal`, so a name is written once. Each `loss_type` here is a registry key in
`engine.losses` (a test checks both sides agree). Torch-free."""

from typing import Literal, get_args

GrpoLossType = Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]
ImportanceSamplingLevel = Literal["token", "sequence", "sequence_token"]
VllmIsMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
ScaleRewards = Literal["group", "batch", "none"]
RewardAggregation = Literal["sum_then_normalize", "normalize_then_sum"]
GroupFilter = Literal["shortest", "reward_per_token"]
FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]
KtoLossType = Literal["kto", "apo_zero_unpaired"]
CpoLossType = Literal["sigmoid", "hinge", "ipo", "simpo", "alphapo"]
SftLossType = Literal["nll", "chunked_nll", "dft"]
RewardName = Literal[
    "accuracy",
    "format",
    "think_format",
    "soft_overlong_punishment",
    "repetition_penalty",
    "cosine_scaled",
    "length",
    "reward_model",
    "http",
    "constant",
]

GRPO_LOSS_TYPES: tuple[str, ...] = get_args(GrpoLossType)
# The GRPO losses whose token weighting GSPO-token's sequence-level ratio plugs into.
SEQUENCE_TOKEN_LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")
IMPORTANCE_SAMPLING_LEVELS: tuple[str, ...] = get_args(ImportanceSamplingLevel)
VLLM_IS_MODES: tuple[str, ...] = get_args(VllmIsMode)
SCALE_REWARDS: tuple[str, ...] = get_args(ScaleRewards)
REWARD_AGGREGATIONS: tuple[str, ...] = get_args(RewardAggregation)
GROUP_FILTERS: tuple[str, ...] = get_args(GroupFilter)
F_DIVERGENCES: tuple[str, ...] = get_args(FDivergence)
KTO_LOSS_TYPES: tuple[str, ...] = get_args(KtoLossType)
CPO_LOSS_TYPES: tuple[str, ...] = get_args(CpoLossType)
SFT_LOSS_TYPES: tuple[str, ...] = get_args(SftLossType)
REWARD_FUNCS: tuple[str, ...] = get_args(RewardName)

# DPO's loss_type is a list of these (TRL's multi-loss form), so it is checked by a validator, not a Literal.
DPO_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_pair",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)
