"""Vision-language models: tiny:vlm, processor and chat template, LoRA on the language part, pixel log-probs,
image rows (validation with row numbers, limits, confined paths) and the built-in `shapes` set."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch

from engine.data.access import DataPolicy, policy, set_policy
from engine.data.formats import DataFormatError
from engine.data.shapes import COLOURS, QUESTION, shapes_rows
from engine.logprobs import naive_token_logprobs, token_logprobs
from engine.models import load_model, load_processor, load_tokenizer
from engine.multimodal.images import MAX_IMAGES_PER_ROW, ImageSource, decode_image, to_data_uri
from engine.multimodal.prompts import VisionPromptEncoder, image_rows, prompt_images
from engine.multimodal.vlm import IMAGE_TOKEN, language_lora_targets


def png(colour=(255, 0, 0), size=(40, 30)) -> str:
    from PIL import Image

    return to_data_uri(Image.new("RGB", size, colour))


@pytest.fixture(scope="module")
def processor():
    return load_processor("tiny:vlm")


def test_tiny_vlm_is_deterministic_and_its_tokenizer_knows_the_image_token(processor):
    a, b = load_model("tiny:vlm"), load_model("tiny:vlm")
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    tok = load_tokenizer("tiny:vlm")
    assert tok.convert_tokens_to_ids(IMAGE_TOKEN) == a.config.image_token_index
    assert len(tok) == a.config.text_config.vocab_size


def test_chat_template_puts_image_slots_where_the_parts_are(processor):
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}],
        }
    ]
    text = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\na<image>b<|im_end|>\n<|im_start|>assistant\n"


def test_encoder_expands_each_image_into_its_tokens_and_returns_pixels(processor):
    rows = image_rows([{"prompt": "How many?", "images": [png(), png((0, 0, 255))]}], ImageSource())
    enc = VisionPromptEncoder(processor, 200, ImageSource())
    ids = enc.row(0, rows[0]["prompt"])
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    assert ids.count(image_id) == 2 * 16  # 32x32 pixels in 8x8 patches, per image
    (vision,) = enc.vision_for([0])
    assert vision["pixel_values"].shape == (2, 3, 32, 32)
    with pytest.raises(DataFormatError, match="row 0.*max_prompt_length"):
        VisionPromptEncoder(processor, 20, ImageSource()).row(0, rows[0]["prompt"])


def test_lora_adapts_only_the_language_model():
    from engine.models import add_lora
    from engine.spec.base import LoraSpec

    model = load_model("tiny:vlm")
    for targets in (None, "all-linear", ["q_proj"]):
        lora = LoraSpec(target_modules=targets)
        peft = add_lora(
            load_model("tiny:vlm"),
            lora.model_copy(update={"target_modules": language_lora_targets(model, targets)}),
        )
        trainable = [n for n, p in peft.named_parameters() if p.requires_grad]
        assert trainable and all(".language_model." in n and "lora_" in n for n in trainable), trainable
    # the vision tower has q_proj / v_proj too: the default targets must not reach them
    assert any("vision_tower" in n and n.endswith("q_proj") for n, _ in model.named_modules())


def test_pixel_log_probs_match_the_full_forward_and_depend_on_the_image(processor):
    model = load_model("tiny:vlm").eval()
    rows = image_rows([{"prompt": "Count.", "images": [png()]}], ImageSource())
    enc = VisionPromptEncoder(processor, 200, ImageSource())
    ids = torch.tensor([enc.row(0, rows[0]["prompt"]) + [10, 11, 12]])
    mask = torch.ones_like(ids)
    (vision,) = enc.vision_for([0])
    with torch.no_grad():
        got, _ = token_logprobs(model, ids, mask, logits_to_keep=3, vision=vision)
        want = naive_token_logprobs(model, ids, mask, 3, vision=vision)
        other, _ = token_logprobs(
            model, ids, mask, logits_to_keep=3, vision={"pixel_values": -vision["pixel_values"]}
        )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, other)


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"prompt": "x", "images": ["data:image/png;base64,@@@"]}, "not valid base64"),
        (
            {"prompt": "x", "images": ["data:image/png;base64," + base64.b64encode(b"no image").decode()]},
            "cannot be decoded",
        ),
        ({"prompt": "x", "images": "nope.png"}, "does not exist"),
        ({"prompt": "x", "images": [png()] * (MAX_IMAGES_PER_ROW + 1)}, f"at most {MAX_IMAGES_PER_ROW}"),
        (
            {
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}],
                "images": [png()],
            },
            "2 image slot",
        ),
        ({"prompt": [{"role": "user", "content": [{"type": "video"}]}]}, "part 0 must be"),
        ({"prompt": "x", "images": [3]}, "path or a base64 data URI"),
    ],
)
def test_bad_image_rows_are_refused_with_the_row_number(tmp_path, row, needle):
    good = {"prompt": "fine", "images": [png()]}
    with pytest.raises(DataFormatError) as err:
        image_rows([good, good, row], ImageSource(folder=tmp_path))
    assert "row 2" in str(err.value) and needle in str(err.value), str(err.value)


def test_image_paths_are_read_relative_to_the_dataset_and_confined_to_data_roots(tmp_path):
    from PIL import Image

    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    root.mkdir(), outside.mkdir()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(root / "a.png")
    Image.new("RGB", (8, 8), (0, 255, 0)).save(outside / "b.png")
    rows = image_rows([{"prompt": "x", "images": ["a.png"]}], ImageSource(folder=root))
    assert prompt_images(rows[0]["prompt"]) == ["a.png"]
    before = policy()
    set_policy(DataPolicy(confined=True, roots=(root,)))
    try:
        image_rows([{"prompt": "x", "images": ["a.png"]}], ImageSource(folder=root))
        with pytest.raises(DataFormatError, match="row 0.*outside the folders"):
            image_rows([{"prompt": "x", "images": [str(outside / "b.png")]}], ImageSource(folder=root))
    finally:
        set_policy(before)


def test_oversized_images_are_refused():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="scale it down"):
        decode_image(buf.getvalue())


def test_shapes_rows_are_deterministic_and_the_answer_is_in_the_picture():
    assert shapes_rows(20, seed=1) == shapes_rows(20, seed=1)
    assert shapes_rows(20, seed=1) != shapes_rows(20, seed=2)
    rows = shapes_rows(60, seed=0)
    assert {r["answer"] for r in rows} == {"1", "2", "3"}
    for row in rows:
        (message,) = row["prompt"]
        assert message["content"][1] == {"type": "text", "text": QUESTION}
        image = decode_image(base64.b64decode(prompt_images(row["prompt"])[0].split(",", 1)[1]))
        colours = {c for _, c in image.getcolors()} - {(0, 0, 0)}
        assert colours <= set(COLOURS) and len(colours) == int(row["answer"])
    json.dumps(rows)  # plain JSON: the same rows work as an uploaded JSONL file


def test_image_jobs_need_a_vision_language_model_at_submission():
    from engine.spec import parse_job_spec, unsupported

    shapes = {"dataset": {"builtin": "shapes"}, "reward_funcs": [{"name": "accuracy"}]}
    assert unsupported(parse_job_spec({**shapes, "algorithm": "grpo", "model": "tiny:vlm"})) is None
    assert unsupported(parse_job_spec({**shapes, "algorithm": "papo", "model": "tiny:vlm"})) is None
    for algorithm in ("grpo", "papo"):
        problem = unsupported(parse_job_spec({**shapes, "algorithm": algorithm, "model": "tiny:llama"}))
        assert problem.field == "model" and "vision-language" in str(problem)


def test_a_saved_vision_model_loads_back_from_its_folder(tmp_path):
    from engine.models import is_vision_model, save_model

    model = load_model("tiny:vlm")
    save_model(model, load_processor("tiny:vlm"), tmp_path / "vlm")
    assert is_vision_model(str(tmp_path / "vlm")) and not is_vision_model("tiny:llama")
    again = load_model(str(tmp_path / "vlm"))
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    processor = load_processor(str(tmp_path / "vlm"))
    rows = image_rows([{"prompt": "n?", "images": [png()]}], ImageSource())
    ids = VisionPromptEncoder(processor, 200, ImageSource()).row(0, rows[0]["prompt"])
    assert ids.count(processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)) == 16


def test_image_rows_need_a_vision_model_and_papo_needs_images():
    from types import SimpleNamespace

    from engine.multimodal.job import vision_setup

    def spec(algorithm, model="m", **config):
        cfg = SimpleNamespace(**{"max_prompt_length": 128, "use_vllm": False, **config})
        return SimpleNamespace(algorithm=algorithm, model=model, config=cfg, dataset=SimpleNamespace())

    images = [{"prompt": "n?", "images": [png()]}]
    text = [{"prompt": "n?"}]

    def never():
        raise AssertionError("no processor is loaded for a refused job")

    formats = ("prompt_only",)
    assert vision_setup(spec("grpo"), text, None, formats, vlm=False, load_processor=never) is None
    with pytest.raises(ValueError, match="not a vision-language model"):
        vision_setup(spec("grpo"), images, None, formats, vlm=False, load_processor=never)
    with pytest.raises(ValueError, match="name no images"):
        vision_setup(spec("papo"), text, None, formats, vlm=True, load_processor=never)
    with pytest.raises(ValueError, match="use_vllm"):
        vision_setup(spec("grpo", use_vllm=True), images, None, formats, vlm=True, load_processor=never)
