"""SDK pieces without a server: gates, --set overrides, the SSE parser, typed errors, command routing."""

from __future__ import annotations

import pytest
from papertrain_sdk import parse_gate
from papertrain_sdk.cli import UsageError, apply_set, dry_run_text, load_spec
from papertrain_sdk.client import _parse_sse
from papertrain_sdk.errors import Conflict, InvalidRequest, NotFound, ServerError, from_response
from papertrain_sdk.models import DryRun

METRICS = {"rollout/reward_mean": [(1, 0.1), (2, 0.5), (3, 0.3)]}


@pytest.mark.parametrize(
    ("text", "passed", "value"),
    [
        ("rollout/reward_mean>=0.3", True, 0.3),  # the last value
        ("rollout/reward_mean > 0.3", False, 0.3),
        ("max(rollout/reward_mean)>=0.5", True, 0.5),
        ("min(rollout/reward_mean)<0.2", True, 0.1),
        ("mean(rollout/reward_mean)==0.3", True, pytest.approx(0.3)),
        ("rollout/reward_mean!=0.3", False, 0.3),
    ],
)
def test_gates_compare_the_chosen_statistic(text, passed, value) -> None:
    result = parse_gate(text).check(METRICS)
    assert result.passed is passed and result.value == value


def test_gate_on_a_missing_metric_fails_and_bad_gates_are_refused() -> None:
    result = parse_gate("policy/kl<1").check(METRICS)
    assert not result.passed and "never logged" in result.reason and "rollout/reward_mean" in result.reason
    for bad in ("reward", "reward>=", "reward>=high", "median(x)>1"):
        with pytest.raises(ValueError):
            parse_gate(bad)


def test_set_writes_typed_values_at_dotted_paths() -> None:
    spec = {"config": {"beta": 0.1}}
    for assignment in (
        "config.beta=0.0",
        "config.max_steps=5",
        "name=ci",
        "peft_config.r=8",
        "config.bf16=true",
        "config.learning_rate=2e-4",  # a number, as in JSON, although YAML 1.1 has no float without a dot
    ):
        apply_set(spec, assignment)
    assert spec == {
        "config": {"beta": 0.0, "max_steps": 5, "bf16": True, "learning_rate": 0.0002},
        "name": "ci",
        "peft_config": {"r": 8},
    }
    with pytest.raises(UsageError):
        apply_set(spec, "config.beta")
    with pytest.raises(UsageError):
        apply_set(spec, "name.x=1")  # name is not a mapping


def test_spec_files_read_exponents_as_numbers(tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("name: '1e-3'\nconfig: {learning_rate: 1e-5, beta: 4.0e-2, max_steps: 8}\n")
    assert load_spec(str(path)) == {
        "name": "1e-3",
        "config": {"learning_rate": 1e-5, "beta": 0.04, "max_steps": 8},
    }


def test_sse_parser_skips_comments_and_reads_events() -> None:
    lines = [
        "retry: 1000",
        "",
        ": heartbeat",
        "",
        "id: 7",
        "event: log",
        'data: {"id": 7, "kind": "log", "step": null, "data": {"message": "hi"}}',
        "",
    ]
    (event,) = _parse_sse(iter(lines))
    assert (event.id, event.kind, event.data) == (7, "log", {"message": "hi"})


def test_error_bodies_become_typed_errors_with_param() -> None:
    body = {"error": {"code": "invalid_spec", "message": "config.beta: bad", "param": "config.beta"}}
    err = from_response(422, body)
    assert isinstance(err, InvalidRequest) and err.param == "config.beta" and err.status == 422
    assert isinstance(from_response(404, {"error": {"code": "job_not_found", "message": "x"}}), NotFound)
    assert isinstance(from_response(409, {"error": {"code": "c", "message": "x"}}), Conflict)
    err = from_response(502, "<html>bad gateway</html>")
    assert isinstance(err, ServerError) and err.retryable and "502" in err.message


def test_the_server_cli_hands_client_groups_to_the_sdk(capsys) -> None:
    from papertrain.cli import main

    assert main(["jobs", "list", "--url", "http://127.0.0.1:9"]) == 6
    assert "did not answer" in capsys.readouterr().err


def test_the_server_help_names_the_client_commands_and_the_settings_of_up(capsys) -> None:
    from papertrain.cli import main

    for argv, needles in (
        (["--help"], ("jobs|presets|files",)),
        (["up", "--help"], ("PAPERTRAIN_PORT", "PAPERTRAIN_VAR_DIR")),
    ):
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert all(n in out for n in needles), out


def test_dry_run_text_shows_the_preset_changes_and_the_size() -> None:
    dry = DryRun(
        spec={"algorithm": "grpo", "model": "tiny:llama"},
        preset={"id": "dapo", "version": 2},
        preset_diff=[
            {"param": "config.max_steps", "preset_value": None, "value": 8, "preset_fixed": False},
            {
                "param": "config.beta",
                "preset_value": 0.0,
                "value": 0.04,
                "preset_fixed": True,
                "objective": True,
            },
        ],
        estimate={"steps": 8, "sequences_per_step": 16, "max_tokens": 70000},
    )
    assert dry_run_text(dry).splitlines() == [
        "valid: grpo on tiny:llama, preset dapo v2 (nothing was submitted)",
        "  config.max_steps = 8 (preset: not set)",
        "  config.beta = 0.04 (preset: 0.0, part of its objective)",
        "estimate: 8 steps of 16 sequences, at most 70,000 tokens",
    ]


def test_progress_eta_follows_the_engine_clock_so_replayed_history_keeps_its_pace() -> None:
    import io
    from types import SimpleNamespace

    from papertrain_sdk.cli import Follower, Printer

    err = io.StringIO()
    follow = Follower(Printer("text", stream=err))
    for step, ts in ((1, 100.0), (2, 110.0)):  # 10 s a step by the engine's clock, delivered at once
        follow(SimpleNamespace(kind="progress", step=step, data={"step": step, "total_steps": 10, "ts": ts}))
    follow(SimpleNamespace(kind="metrics", step=2, data={"metrics": {"train/loss": 1.5}}))
    assert err.getvalue().strip() == "step 2/10   20%  ETA 0:01:20  train/loss=1.5"
