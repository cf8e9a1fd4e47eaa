"""The dashboard in chromium against a running platform (api + real worker, SQLite): sign in and out
without leaving data on screen, launch a paper preset from the gallery and watch its curves and samples
arrive live, cancel it; form errors come from the server and sit next to their inputs; compare two
runs; retry, clone and upload from the page; the MLflow link and a flat curve's axis; /docs renders
offline. Any console error fails a test (see conftest)."""

from __future__ import annotations

import json
import re
import zipfile

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SFT = {"algorithm": "sft", "model": "tiny:llama", "dataset": {"builtin": "chat", "num_rows": 16}}


@pytest.fixture(scope="module", autouse=True)
def two_sft_runs(platform) -> list[str]:
    """Two short SFT runs that differ in learning rate, submitted through the API when the module starts,
    so they train while the first tests drive the browser."""
    ids = []
    for lr in (1e-3, 3e-3):
        body = {
            **SFT,
            "name": f"sft-lr-{lr}",
            "config": {
                "max_steps": 3,
                "learning_rate": lr,
                "lr_scheduler_type": "constant",  # a flat train/learning_rate curve
                "logging_steps": 1,
            },
        }
        res = platform.call("alice", "POST", "/v1/jobs", json=body)
        assert res.status_code == 201, res.text
        ids.append(res.json()["id"])
    return ids


def test_docs_render_offline(page) -> None:
    page.goto("/docs")
    page.wait_for_selector(".swagger-ui .info .title:has-text('papertrain')", timeout=90_000)
    page.wait_for_selector(".opblock-summary-path:has-text('/v1/jobs')")


def test_sign_in_shows_the_user_and_sign_out_leaves_nothing(page, platform, login, console) -> None:
    job = platform.call("alice", "POST", "/v1/jobs", json={**SFT, "name": "alice-secret-run"}).json()
    platform.call("alice", "POST", f"/v1/jobs/{job['id']}/cancel")

    console.expect(401, "/v1/me")
    page.goto("/")
    page.fill("#token", "pt_not-a-token")
    page.press("#token", "Enter")
    page.wait_for_selector("#login-error:has-text('not accepted')")

    login(page, "alice")
    assert page.locator("#login-error").inner_text() == ""  # the stale error is gone
    page.wait_for_selector("text=alice-secret-run")

    page.click("#logout")
    page.wait_for_selector("#login", state="visible")
    assert "alice-secret-run" not in page.locator("body").inner_text()
    assert page.locator("#whoami").inner_text() == ""
    assert page.evaluate("localStorage.length") == 0
    assert page.locator("#view").evaluate("el => el.children.length") == 0

    login(page, "bob")
    page.wait_for_selector("#runs-table")
    page.wait_for_selector("text=No runs yet")  # an empty list that says how to start
    assert "alice-secret-run" not in page.locator("body").inner_text()


def test_form_errors_come_from_the_server_and_point_at_the_input(page, platform, login, console) -> None:
    login(page, "alice")
    page.goto("/#/launch?algorithm=sft")
    page.fill("#f-model", "tiny:llama")
    page.fill("[data-param='config.warmup_ratio'] input", "7")
    console.expect(422, "/v1/jobs:validate")
    page.click("#check")

    field = page.locator("[data-param='config.warmup_ratio']")
    field.locator(".field-error:not(:empty)").wait_for()
    shown = field.locator(".field-error").inner_text()
    body = {
        "algorithm": "sft",
        "model": "tiny:llama",
        "dataset": {"builtin": "chat"},
        "config": {"warmup_ratio": 7},
    }
    server = platform.call("alice", "POST", "/v1/jobs:validate", json=body).json()["error"]
    assert server["param"] == "config.warmup_ratio"
    assert shown == next(
        d["message"] for d in server.get("details", [server]) if d["param"] == server["param"]
    )
    assert page.locator("#f-config-warmup_ratio").get_attribute("aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "f-config-warmup_ratio"

    page.fill("#f-config-warmup_ratio", "0.1")  # fixed: the dry run now passes and shows the resolved spec
    page.click("#check")
    page.wait_for_selector("#resolved-spec")
    assert '"warmup_ratio": 0.1' in page.locator("#resolved-spec").inner_text()
    assert page.locator(".field-error:not(:empty)").count() == 0


def test_gallery_launch_live_curves_and_samples_then_cancel(
    page, platform, login, console, screenshot
) -> None:
    login(page, "alice")
    page.click("nav >> text=Presets")
    card = page.locator("#preset-gspo")
    assert card.get_attribute("data-runnable") == "true"
    assert card.locator("a[href*='arxiv.org/abs/2507.18071']").count() == 1
    screenshot(page, "gallery")
    card.locator("text=Launch").click()

    page.wait_for_selector("#f-preset")
    assert page.locator("#f-preset").input_value() == "gspo"
    assert (
        page.locator("[data-param='config.importance_sampling_level'] .tag").count() == 1
    )  # fixed by the preset
    page.fill("#f-name", "gspo-browser")
    page.fill("#f-model", "tiny:llama")
    page.fill("#f-dataset-num_rows", "64")
    page.locator("summary", has_text="Logging & checkpoints").click()
    for key, value in {
        "max_steps": "400",
        "num_generations": "2",
        "per_device_train_batch_size": "4",
        "max_completion_length": "8",
        "logging_steps": "1",
        "save_steps": "2",
        "steps_per_generation": "2",
    }.items():
        page.fill(f"#f-config-{key}", value)
    # steps_per_generation is part of GSPO's objective (4 in the paper): the server wants it confirmed
    console.expect(422, "/v1/jobs:validate")
    page.click("#check")
    field = page.locator("[data-param='config.steps_per_generation']")
    field.locator(".field-error:not(:empty)").wait_for(timeout=60_000)
    assert "objective" in field.locator(".field-error").inner_text()
    page.check("#f-override")
    page.click("#check")
    page.wait_for_selector("#preset-diff", timeout=60_000)
    row = page.locator("#preset-diff tr", has_text="config.steps_per_generation")
    assert "objective" in row.inner_text() and row.locator("code.new").inner_text() == "2"
    screenshot(page, "launch-form", full_page=False)
    page.click("#launch")

    page.wait_for_url(re.compile(r"#/runs/job_"))
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#run-title:has-text('gspo-browser')")
    # live: no reload from here on
    page.wait_for_selector("figure.chart canvas", timeout=180_000)
    page.wait_for_selector("#samples-table tbody tr", timeout=180_000)
    # a second logged step arrives without a reload (the page's CSP forbids wait_for_function's eval)
    page.locator("#sample-step option").nth(1).wait_for(state="attached", timeout=180_000)
    rows = page.locator("#samples-table tbody tr")
    assert rows.count() >= 1 and rows.first.locator("td").nth(2).inner_text() != ""
    page.click("#sample-prev")
    assert page.locator("#sample-step").input_value() != page.locator(
        "#sample-step option"
    ).last.get_attribute("value")
    assert page.locator(".timeline").inner_text().count("running") == 1
    page.wait_for_selector("#checkpoints .download")
    screenshot(page, "run-page", full_page=True)

    page.click("#cancel")
    page.wait_for_selector(".run-header .badge.status-cancelled", timeout=120_000)
    assert platform.call("alice", "GET", f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_compare_two_runs(page, platform, login, two_sft_runs, screenshot) -> None:
    for job_id in two_sft_runs:
        assert platform.wait_status("alice", job_id, {"succeeded", "failed"}, 240)["status"] == "succeeded"
    login(page, "alice")
    page.goto("/#/runs")
    for job_id in two_sft_runs:
        page.check(f"tr[data-id='{job_id}'] input[type=checkbox]")
    page.click("#compare-picked")
    page.wait_for_selector("figure.chart[data-metric='train/loss'] canvas")
    legend = page.locator("figure.chart[data-metric='train/loss'] .u-legend .u-series")
    assert legend.count() == 3  # the step axis and one line per run
    diff = page.locator("#spec-diff tbody").inner_text()
    assert "config.learning_rate" in diff and "0.001" in diff and "0.003" in diff
    assert "model" not in [row.split("\t")[0] for row in diff.splitlines()]  # equal keys hidden
    screenshot(page, "compare", full_page=True)

    # against a GRPO run, a key SFT does not have is shown as absent, not as null
    grpo = {
        "algorithm": "grpo",
        "model": "tiny:llama",
        "dataset": {"builtin": "arithmetic"},
        "config": {"beta": 0.0},
    }
    grpo_id = platform.call("alice", "POST", "/v1/jobs", json=grpo).json()["id"]
    platform.call("alice", "POST", f"/v1/jobs/{grpo_id}/cancel")
    page.goto(f"/#/compare?ids={two_sft_runs[0]},{grpo_id}")
    page.wait_for_selector(f".legend a[href='#/runs/{grpo_id}']")
    beta = page.locator("#spec-diff tbody tr", has=page.locator("th", has_text=re.compile(r"^config\.beta$")))
    beta.locator("td").first.wait_for()
    assert beta.locator("td").all_inner_texts() == ["—", "0"]
    assert page.locator(".legend a").first.inner_text() == f"sft-lr-0.001 ({two_sft_runs[0][-6:]})"


def test_run_page_links_mlflow_and_draws_a_flat_curve_around_its_value(
    page, platform, login, two_sft_runs
) -> None:
    job_id = two_sft_runs[0]  # learning rate 1e-3, constant
    job = platform.wait_status("alice", job_id, {"succeeded", "failed"}, 240)
    assert job["mlflow_run_id"], job
    login(page, "alice")
    page.goto(f"/#/runs/{job_id}")
    link = page.locator("#mlflow-link")
    assert link.get_attribute("href") == f"{platform.mlflow_ui_url}/#/runs/{job['mlflow_run_id']}"
    assert link.inner_text() == job["mlflow_run_id"]
    page.wait_for_selector("#events li .msg")
    starts = {round(m.bounding_box()["x"]) for m in page.locator("#events li .msg").all()}
    assert len(starts) == 1, starts  # every message starts in the same column, with or without a step
    with page.expect_download() as download:  # the final model, below the checkpoints
        page.click("#checkpoints .download[data-step='final']")
    assert download.value.suggested_filename == f"{job_id}-final.zip"
    assert "config.json" in zipfile.ZipFile(download.value.path()).namelist()

    page.locator("summary", has_text="Metrics shown").click()
    page.check(".metric-picker input[value='train/learning_rate']")
    chart = page.locator("figure.chart[data-metric='train/learning_rate']")
    chart.locator("canvas").first.wait_for()
    low, high = (float(v) for v in chart.get_attribute("data-y-range").split(","))
    # centred on the value, not uPlot's 0-based default ([0, 2e-3] here; [0, 100] for a flat 0)
    assert 0 < low < 1e-3 < high < 2e-3 and (high - low) < 1e-3


def test_retry_then_clone_from_the_run_page(page, platform, login) -> None:
    body = {
        **SFT,
        "name": "retry-me",
        "dataset": {"builtin": "chat", "num_rows": 8},
        "config": {"max_steps": 1},
    }
    job = platform.call("alice", "POST", "/v1/jobs", json=body).json()
    platform.call("alice", "POST", f"/v1/jobs/{job['id']}/cancel")
    platform.wait_status("alice", job["id"], {"cancelled"}, 120)

    login(page, "alice")
    page.goto(f"/#/runs/{job['id']}")
    page.click("#retry")
    page.wait_for_selector("#retry", state="detached")  # no longer failed or cancelled
    page.wait_for_selector(".run-header .badge:not(.status-cancelled)")
    retried = platform.wait_status("alice", job["id"], {"succeeded", "failed"}, 240)
    assert retried["status"] == "succeeded", retried["error"]
    page.wait_for_selector(".run-header .badge.status-succeeded", timeout=60_000)  # live, no reload

    page.click("#clone")
    page.wait_for_url(re.compile(r"#/launch\?clone="))
    page.wait_for_selector("#f-model")
    assert page.locator("#f-name").input_value() == "retry-me (copy)"
    assert page.locator("#f-model").input_value() == "tiny:llama"
    assert page.locator("#f-dataset-num_rows").input_value() == "8"
    assert page.locator("#f-config-max_steps").input_value() == "1"
    page.click("#launch")
    page.wait_for_url(re.compile(r"#/runs/job_"))
    clone_id = page.url.rsplit("/", 1)[1]
    assert clone_id != job["id"]
    clone = platform.call("alice", "GET", f"/v1/jobs/{clone_id}").json()
    assert clone["spec_submitted"] == {**body, "name": "retry-me (copy)"}
    platform.wait_status("alice", clone_id, {"succeeded", "failed"}, 240)


def test_upload_a_dataset_from_the_launch_form(page, platform, login, tmp_path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": str(i)}]}
        for i in range(5)
    ]
    data = tmp_path / "my-chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    login(page, "alice")
    page.goto("/#/launch?algorithm=sft")
    page.fill("#f-model", "tiny:llama")
    page.set_input_files("#f-upload", str(data))
    page.wait_for_selector("[role=status]:has-text('uploaded my-chat.jsonl: 5 rows')")
    (uploaded,) = [
        f
        for f in platform.call("alice", "GET", "/v1/files").json()["files"]
        if f["filename"] == "my-chat.jsonl"
    ]
    assert page.locator("#f-dataset-file_id").input_value() == uploaded["id"]
    assert page.locator("input[name=ds-source][value=file]").is_checked()
    assert (
        page.locator("#f-dataset-file_id").is_visible()
        and not page.locator("#f-dataset-builtin").is_visible()
    )
    page.click("#check")
    page.wait_for_selector("#resolved-spec")
    dataset = json.loads(page.locator("#resolved-spec").inner_text())["dataset"]
    assert dataset["path"].endswith(f"{uploaded['id']}.jsonl") and dataset.get("builtin") is None
    # 5 rows in batches of 8 (the default) for one epoch: one step of 8 sequences of up to 1024 tokens
    assert (
        page.locator("#estimate")
        .inner_text()
        .startswith("Size: 1 step of 8 sequences, at most 8,192 tokens (")
    )


def test_a_refused_upload_shows_the_line_and_the_fix_and_an_empty_list_says_how_to_start(
    page, platform, login, console, tmp_path
) -> None:
    data = tmp_path / "broken.jsonl"
    data.write_text('{"prompt": "a"}\n{"prompt": "b"\n')
    login(page, "bob")  # bob has no runs
    page.goto("/#/runs")
    page.wait_for_selector("#view td.empty:has-text('No runs yet')")
    assert page.locator(".pager").inner_text().count("0 runs") == 1
    page.goto("/#/launch?algorithm=sft")
    page.check("input[name=ds-source][value=file]")
    console.expect(422, "/v1/files")
    page.set_input_files("#f-upload", str(data))
    error = page.locator("[data-param='dataset.file_id'] .field-error")
    error.filter(has_text="line 2").wait_for()
    assert "fix line 2" in error.inner_text() and page.locator("#f-upload").is_visible()


def test_a_failed_run_says_what_went_wrong_and_what_to_do(page, platform, login) -> None:
    rows = b'{"prompt": "2+2?"}\n{"prompt": "3+3?"}\n'  # prompts only: nothing SFT can train on
    upload = platform.call("alice", "POST", "/v1/files", files={"file": ("prompts.jsonl", rows)}).json()
    body = {**SFT, "dataset": {"file_id": upload["id"]}, "config": {"max_steps": 1}}
    job_id = platform.call("alice", "POST", "/v1/jobs", json=body).json()["id"]
    job = platform.wait_status("alice", job_id, {"succeeded", "failed"}, 240)
    assert job["status"] == "failed" and job["error"]["remediation"], job
    login(page, "alice")
    page.goto(f"/#/runs/{job_id}")
    error = page.locator(".job-error")
    error.wait_for()
    assert job["error"]["code"] in error.inner_text()
    assert error.locator(".remediation").inner_text() == f"What to do: {job['error']['remediation']}"


def test_samples_of_image_prompts_show_their_thumbnails(page, platform, login) -> None:
    body = {
        "algorithm": "grpo",
        "name": "shapes-thumbnails",
        "model": "tiny:vlm",
        "dataset": {"builtin": "shapes", "num_rows": 8},
        "reward_funcs": [{"name": "accuracy"}],
        "config": {
            "max_steps": 1,
            "per_device_train_batch_size": 4,
            "num_generations": 2,
            "max_completion_length": 2,
            "max_prompt_length": 128,
            "logging_steps": 1,
        },
    }
    res = platform.call("alice", "POST", "/v1/jobs", json=body)
    assert res.status_code == 201, res.text
    job_id = res.json()["id"]
    assert platform.wait_status("alice", job_id, {"succeeded", "failed"}, 240)["status"] == "succeeded"
    login(page, "alice")
    page.goto(f"/#/runs/{job_id}")
    thumb = page.locator("#samples-table img.thumb").first
    thumb.wait_for(timeout=60_000)
    assert thumb.get_attribute("src").startswith("data:image/png;base64,")
    assert thumb.evaluate("img => img.complete && img.naturalWidth > 0")  # a real, decodable picture


def test_axis_labels_stay_distinct_on_a_narrow_range(page, platform) -> None:
    page.goto("/")
    labels = page.evaluate(
        """async () => {
            const { tickLabels } = await import("/web/js/chart.js");
            return [tickLabels([0.1844876, 0.1844878, 0.184488]), tickLabels([0, 0.5, 1]), tickLabels([2e-5, 4e-5])];
        }"""
    )
    narrow, plain, small = labels
    assert len(set(narrow)) == 3 and [float(v) for v in narrow] == [0.1844876, 0.1844878, 0.184488]
    assert plain == ["0", "0.5", "1"]  # short labels stay short when they already differ
    assert small == ["2e-5", "4e-5"]
