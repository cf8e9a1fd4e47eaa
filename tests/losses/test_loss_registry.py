"""The registries: every public name resolves, misses list the known names, imports stay light."""

import subprocess
import sys

import pytest

from engine.losses import FAMILIES, UnknownLossError, get_loss, register, registry_names
from engine.spec import names


@pytest.mark.parametrize(
    "family,spec_names",
    [
        ("policy", names.GRPO_LOSS_TYPES),
        ("dpo", names.DPO_LOSS_TYPES),
        ("kto", names.KTO_LOSS_TYPES),
        ("cpo", names.CPO_LOSS_TYPES),
        ("sft", names.SFT_LOSS_TYPES),
    ],
)
def test_every_spec_loss_type_resolves(family, spec_names):
    for name in spec_names:
        assert callable(get_loss(family, name))


def test_spec_literals_match_names():
    from engine.spec.grpo import GRPOConfig
    from engine.spec.offline import CPOConfig, KTOConfig, SFTConfig

    assert set(GRPOConfig.model_fields["loss_type"].annotation.__args__) <= set(registry_names("policy"))
    for cls, family in ((CPOConfig, "cpo"), (KTOConfig, "kto"), (SFTConfig, "sft")):
        assert set(cls.model_fields["loss_type"].annotation.__args__) <= set(registry_names(family))


def test_other_families_are_filled():
    assert registry_names("bco") == ["bco"]
    assert registry_names("reward") == ["bradley_terry"]
    assert set(registry_names("distill")) == {"gkd", "gold", "minillm", "uld"}
    assert set(FAMILIES) == {"policy", "dpo", "kto", "bco", "cpo", "reward", "sft", "distill"}


def test_aot_pair_is_the_seed_name_of_aot_unpaired():
    assert get_loss("dpo", "aot_pair") is get_loss("dpo", "aot_unpaired")


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownLossError) as err:
        get_loss("policy", "ppo")
    assert "grpo" in str(err.value) and "dapo" in str(err.value) and "'ppo'" in str(err.value)
    with pytest.raises(UnknownLossError, match="known"):
        get_loss("nope", "x")


def test_duplicate_registration_is_rejected():
    with pytest.raises(ValueError, match="duplicate"):

        @register("dpo", "sigmoid")
        def again(*args):  # pragma: no cover
            return None


def test_import_does_not_pull_heavy_frameworks():
    code = (
        "import sys, engine.losses, engine.advantages, engine.functional\n"
        "bad = [m for m in ('transformers', 'vllm', 'deepspeed') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_no_item_calls_in_the_library():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "engine"
    files = [*sorted((root / "losses").glob("*.py")), root / "functional.py", root / "advantages.py"]
    offenders = [str(f) for f in files if ".item()" in f.read_text()]
    assert not offenders
