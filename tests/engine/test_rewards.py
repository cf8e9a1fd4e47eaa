"""Built-in rewards: exact values worked out from each reward's definition, and the registry's contract."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from engine.rewards import RewardContext, build_reward, build_reward_funcs, known_rewards
from engine.spec.grpo import RewardFuncSpec
from engine.spec.names import REWARD_FUNCS


def reward(name: str, ctx: RewardContext | None = None, **params):
    return build_reward(RewardFuncSpec(name=name, **params), ctx)


def call(func, completions, completion_ids=None, prompts=None, **columns):
    n = len(completions)
    return func(
        prompts=prompts or ["q"] * n,
        completions=completions,
        completion_ids=completion_ids or [[1]] * n,
        **columns,
    )


def test_every_spec_reward_name_is_registered():
    assert set(known_rewards()) == set(REWARD_FUNCS)


def test_unknown_reward_lists_the_known_names():
    class Fake:
        name = "nope"

    with pytest.raises(KeyError, match="accuracy"):
        build_reward(Fake())


def test_repeated_reward_names_get_suffixes():
    funcs = build_reward_funcs([RewardFuncSpec(name="accuracy"), RewardFuncSpec(name="accuracy")])
    assert [f.name for f in funcs] == ["accuracy", "accuracy_2"]


# ------------------------------------------------------------------------------------------------ accuracy


def test_accuracy_compares_the_last_number_with_the_answer_column():
    completions = [
        "12",
        "7 + 5 = 12.",
        "The answer is 13",
        "no idea",
        "12 or maybe 11",
        "1,200",
        "-3",
        "7-5=2",
    ]
    answers = ["12", "12", "12", "12", "12", "1200", "-3", "2"]
    assert call(reward("accuracy"), completions, answer=answers) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_accuracy_gives_no_partial_credit_for_a_close_number():
    assert call(reward("accuracy"), ["12.5", "120", "1"], answer=["12", "12", "12"]) == [0.0, 0.0, 0.0]


def test_accuracy_reads_the_solution_column_and_chat_completions():
    completions = [[{"role": "assistant", "content": "It is 72"}], [{"role": "assistant", "content": "71"}]]
    got = call(reward("accuracy"), completions, solution=["so 72 #### 72", 72])
    assert got == [1.0, 0.0]


def test_accuracy_is_none_when_the_gold_answer_has_no_number():
    assert call(reward("accuracy"), ["5", "5"], answer=["five", None]) == [None, None]


def test_accuracy_without_a_gold_column_names_the_missing_columns():
    with pytest.raises(KeyError, match="'answer' or 'solution'"):
        call(reward("accuracy"), ["5"], question=["q"])


# ------------------------------------------------------------------------------------------------- formats


def test_format_needs_think_then_answer_tags():
    completions = [
        "<think>add them</think>\n<answer>7</answer>",
        "<think>\nmulti\nline\n</think> <answer>7</answer>\n",
        "<answer>7</answer>",
        "<think>x</think>",
        "<think>x</think><answer>7</answer> trailing text",
    ]
    assert call(reward("format"), completions) == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_think_format_follows_the_trl_rule():
    completions = [
        "<think>reasoning</think>answer",
        "<think>\nline\n</think>\n7",
        " <think>x</think>7",  # must start with <think>
        "<think>a<think>b</think>c",  # a second opening tag
        "<think>never closed",
    ]
    assert call(reward("think_format"), completions) == [1.0, 1.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------- penalties


def overlong_expected(length: int, max_len: int, cache: int) -> float:
    if length <= max_len - cache:
        return 0.0
    if length <= max_len:
        return ((max_len - cache) - length) / cache
    return -1.0


def test_soft_overlong_punishment_matches_dapo_eq13():
    func = reward("soft_overlong_punishment", max_completion_len=100, soft_punish_cache=20)
    lengths = [50, 80, 81, 90, 100, 110]
    got = call(func, ["x"] * len(lengths), completion_ids=[[0] * n for n in lengths])
    assert got == pytest.approx([overlong_expected(n, 100, 20) for n in lengths])
    assert got[0] == 0.0 and got[3] == pytest.approx(-0.5) and got[5] == -1.0


def test_soft_overlong_punishment_without_cache_is_a_hard_cut():
    func = reward("soft_overlong_punishment", max_completion_len=10)
    got = call(func, ["x"] * 3, completion_ids=[[0] * 9, [0] * 10, [0] * 11])
    assert got == [0.0, 0.0, -1.0]


def test_repetition_penalty_counts_repeated_token_ngrams():
    func = reward("repetition_penalty", ngram_size=3, max_penalty=-1.0)
    ids = [[1, 2, 3, 1, 2, 3], [1, 2, 3, 4], [5, 5], [7, 7, 7, 7, 7]]
    # [1,2,3,1,2,3]: 4 trigrams, 3 distinct; [1,2,3,4]: 2 distinct of 2; [5,5]: too short; 7s: 3 trigrams, 1 distinct
    expected = [(1 - 3 / 4) * -1.0, 0.0, 0.0, (1 - 1 / 3) * -1.0]
    assert call(func, ["x"] * 4, completion_ids=ids) == pytest.approx(expected)


def test_repetition_penalty_scales_with_max_penalty():
    func = reward("repetition_penalty", ngram_size=2, max_penalty=-0.5)
    assert call(func, ["x"], completion_ids=[[4, 4, 4]]) == pytest.approx([(1 - 1 / 2) * -0.5])


# ------------------------------------------------------------------------------------ length-aware rewards


def test_length_reward_follows_kimi_within_each_prompt_group():
    prompts = ["a", "a", "a", "b", "b"]
    completions = ["7", "7", "8", "3", "3"]
    ids = [[0] * 2, [0] * 6, [0] * 4, [0] * 5, [0] * 5]
    got = call(
        reward("length"), completions, completion_ids=ids, prompts=prompts, answer=["7", "7", "7", "3", "3"]
    )
    lam = [0.5 - (n - 2) / (6 - 2) for n in (2, 6, 4)]  # group a: min 2, max 6
    expected = [lam[0], lam[1], min(0.0, lam[2]), 0.0, 0.0]  # group b: all lengths equal
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("correct", [True, False])
def test_cosine_scaled_reward_interpolates_by_length(correct):
    func = reward("cosine_scaled", max_len=10)
    lengths = [0, 5, 10, 20]
    got = call(
        func, ["4" if correct else "5"] * 4, completion_ids=[[0] * n for n in lengths], answer=["4"] * 4
    )
    lo, hi = (0.5, 1.0) if correct else (-0.5, -1.0)
    expected = [lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * min(n / 10, 1.0))) for n in lengths]
    assert got == pytest.approx(expected)
    assert got[0] == pytest.approx(hi) and got[2] == pytest.approx(lo)


def test_cosine_scaled_defaults_max_len_to_the_generation_budget():
    func = reward("cosine_scaled", RewardContext(max_completion_length=4))
    assert call(func, ["1"], completion_ids=[[0, 0, 0, 0]], answer=["1"]) == pytest.approx([0.5])


# ----------------------------------------------------------------------------------------------- http


class _Handler(BaseHTTPRequestHandler):
    received: list[dict] = []
    reply: object = None

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        _Handler.received.append(body)
        payload = json.dumps(
            _Handler.reply
            if _Handler.reply is not None
            else {"rewards": [len(c) for c in body["completions"]]}
        )
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.received, _Handler.reply = [], None
    yield f"http://127.0.0.1:{httpd.server_address[1]}/score"
    httpd.shutdown()
    httpd.server_close()


def test_http_reward_posts_completions_and_columns(server):
    func = reward("http", url=server)
    got = call(func, ["ab", "abcd"], completion_ids=[[1, 2], [3]], prompts=["p1", "p2"], answer=["1", "2"])
    assert got == [2.0, 4.0]
    body = _Handler.received[0]
    assert body["prompts"] == ["p1", "p2"] and body["completion_ids"] == [[1, 2], [3]]
    assert body["columns"] == {"answer": ["1", "2"]}


def test_http_reward_rejects_a_wrong_number_of_rewards(server):
    _Handler.reply = {"rewards": [1.0]}
    with pytest.raises(RuntimeError, match="expected 2 rewards"):
        call(reward("http", url=server), ["a", "b"])


def test_http_reward_passes_null_through(server):
    _Handler.reply = {"rewards": [None, 0.5]}
    assert call(reward("http", url=server), ["a", "b"]) == [None, 0.5]


def test_http_reward_names_the_url_when_unreachable():
    func = reward("http", url="http://127.0.0.1:9/none", timeout_s=2)
    with pytest.raises(RuntimeError, match="127.0.0.1:9"):
        call(func, ["a"])


# ----------------------------------------------------------------------------------------- reward model


def test_reward_model_scores_prompt_plus_completion(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from engine.models import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    func = reward("reward_model", model=str(tmp_path))
    assert func.name == tmp_path.name
    prompts = [[{"role": "user", "content": "What is 1+1?"}], "plain prompt "]
    completions = ["2", "a much longer completion to force padding"]
    got = call(func, completions, prompts=prompts)

    model = LlamaForSequenceClassification.from_pretrained(tmp_path).eval()
    texts = [
        tok.apply_chat_template([*prompts[0], {"role": "assistant", "content": "2"}], tokenize=False),
        prompts[1] + completions[1],
    ]
    with torch.no_grad():  # each text alone, no padding: the expected score
        expected = [
            model(**tok(t, return_tensors="pt", add_special_tokens=False)).logits[0, 0].item() for t in texts
        ]
    assert got == pytest.approx(expected, abs=1e-5)
