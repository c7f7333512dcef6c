"""PNG parameters: tessera JSON chunk round trip, A1111 'parameters' chunk, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine import __version__
from engine.errors import BadInputError
from engine.pngmeta import a1111_text, parse_a1111, read_params, save_png


def _params(**kw):
    base = {
        "prompt": "a red circle above a blue square",
        "seed": 7,
        "settings": {"cfg": 3.0, "temperature": 1.0, "top_p": 0.9, "cdk_alpha": None, "n": 4},
        "model_id": "shapes-test",
        "task": "generate",
    }
    return {**base, **kw}


def test_round_trip_pixels_and_params(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    path = save_png(tmp_path / "out.png", image, _params(seed=np.int64(7)))
    back = np.asarray(Image.open(path))
    assert np.array_equal(back, image)
    meta = read_params(path)
    assert meta["prompt"] == "a red circle above a blue square"
    assert meta["seed"] == 7 and isinstance(meta["seed"], int)
    assert meta["settings"]["cfg"] == 3.0 and meta["settings"]["n"] == 4
    assert meta["model_id"] == "shapes-test" and meta["task"] == "generate"
    assert meta["version"] == __version__


def test_unicode_prompt_and_extra_keys(tmp_path):
    path = save_png(
        tmp_path / "u.png", np.zeros((8, 8, 3), np.uint8), _params(prompt="un cercle rouge ✓ 円", rank=2)
    )
    meta = read_params(path)
    assert meta["prompt"] == "un cercle rouge ✓ 円" and meta["rank"] == 2
    text = Image.open(path).text
    assert text["parameters"].startswith("un cercle rouge ✓ 円\n")


def test_a1111_chunk_layout(tmp_path):
    path = save_png(tmp_path / "a.png", np.zeros((64, 32, 3), np.uint8), _params())
    parameters = Image.open(path).text["parameters"]
    prompt, line = parameters.split("\n")
    assert prompt == "a red circle above a blue square"
    assert "Seed: 7" in line and "CFG scale: 3.0" in line and "Size: 32x64" in line
    assert "CD-K alpha" not in line  # None values are left out
    parsed = parse_a1111(parameters)
    assert parsed["settings"]["Seed"] == "7" and parsed["settings"]["Model"] == "shapes-test"


def test_a1111_only_png_is_read(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters", 'a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, Seed: 1, Model: "x, y"'
    )
    path = tmp_path / "sd.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path, pnginfo=info)
    meta = read_params(path)
    assert meta["prompt"] == "a cat" and meta["negative_prompt"] == "blurry"
    assert meta["settings"] == {"Steps": "20", "Sampler": "Euler a", "Seed": "1", "Model": "x, y"}
    assert meta["source"] == "parameters"


def test_quoted_values_survive():
    text = a1111_text({"prompt": "p", "seed": 1, "settings": {"note": "a, b: c"}})
    assert parse_a1111(text)["settings"]["Note"] == "a, b: c"


def test_grayscale_and_no_params(tmp_path):
    classes = np.arange(64, dtype=np.uint8).reshape(8, 8)
    path = save_png(tmp_path / "c.png", classes)
    assert np.array_equal(np.asarray(Image.open(path)), classes)
    with pytest.raises(BadInputError, match="carries no generation parameters"):
        read_params(path)


def test_bad_inputs(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        read_params(tmp_path / "missing.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(BadInputError, match="not an image file"):
        read_params(junk)
    jpg = tmp_path / "x.jpg"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(jpg)
    with pytest.raises(BadInputError, match="not a PNG"):
        read_params(jpg)
    with pytest.raises(BadInputError, match="uint8"):
        save_png(tmp_path / "f.png", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(BadInputError, match="shape"):
        save_png(tmp_path / "f.png", np.zeros((4, 4, 5), np.uint8))
    assert not (tmp_path / "f.png").exists()


def test_corrupt_tessera_chunk(tmp_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("tessera", "{not json")
    path = tmp_path / "bad.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path, pnginfo=info)
    with pytest.raises(BadInputError, match="not valid JSON"):
        read_params(path)
    assert json.loads(json.dumps(parse_a1111("only a prompt"))) == {
        "prompt": "only a prompt",
        "negative_prompt": "",
        "settings": {},
    }
