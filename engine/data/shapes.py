"""The built-in `shapes` dataset: count the coloured squares in a generated picture (GRPO, PAPO, RLOO).

    {"prompt": [{"role": "user", "content": [{"type": "image", "image": "data:image/png;base64,..."},
                {"type": "text", "text": "How many squares are in the picture? Answer with the number only."}]}],
     "answer": "2"}

Each picture is 64x64 on a black background with 1..`max_count` squares of distinct bright colours in
distinct cells of a 2x2 grid, so the answer can only be read from the image; the `accuracy` reward checks
it. Rows are a pure function of `(num_rows, seed, max_count)`; images are inline PNG data URIs.
"""

from __future__ import annotations

import base64
import io
import random

QUESTION = "How many squares are in the picture? Answer with the number only."
SIZE = 64
CELL = SIZE // 2
COLOURS = ((230, 40, 40), (40, 200, 60), (50, 90, 240), (240, 220, 40), (220, 60, 220), (40, 220, 220))


def shapes_image(count: int, rng: random.Random) -> object:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    cells = rng.sample(range(4), count)
    colours = rng.sample(COLOURS, count)
    for cell, colour in zip(cells, colours, strict=True):
        side = rng.randint(CELL // 2, CELL - 4)
        x0 = (cell % 2) * CELL + rng.randint(1, CELL - side - 1)
        y0 = (cell // 2) * CELL + rng.randint(1, CELL - side - 1)
        draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=colour)
    return img


def to_data_uri(image: object) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # type: ignore[attr-defined]
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def shapes_rows(num_rows: int = 1000, seed: int = 0, *, max_count: int = 3) -> list[dict]:
    """`num_rows` pictures with 1..max_count squares (uniform) and the question how many there are."""
    if num_rows < 1:
        raise ValueError(f"num_rows must be >= 1 for the shapes dataset (got {num_rows})")
    if not 1 <= max_count <= 4:
        raise ValueError(f"max_count must be in 1..4 for the shapes dataset (got {max_count})")
    rng = random.Random(seed)
    rows = []
    for _ in range(num_rows):
        count = rng.randint(1, max_count)
        image = to_data_uri(shapes_image(count, rng))
        content = [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]
        rows.append({"prompt": [{"role": "user", "content": content}], "answer": str(count)})
    return rows
