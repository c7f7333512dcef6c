"""`tessera train recipe folder`: the held-out split, the plan, the arguments, and the training source
reading the held-out part for validation with the run's tokenizers recorded."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from engine.cli import main
from training.folder_recipe import folder_stages, plan, split_folder
from training.recipe import RECIPES_DIR, tomllib

TEMPLATE = tomllib.loads((RECIPES_DIR / "shapes-sft.toml").read_text())


def make_folder(root, n=40):
    """n captioned 12 px images (0 and 1 identical files, 2 and 3 without captions) in metadata.jsonl."""
    root.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / f"{i}.png")
        if i not in (2, 3):
            rows.append({"file_name": f"{i}.png", "text": f"picture {i % 4}"})
    (root / "1.png").write_bytes((root / "0.png").read_bytes())
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def contents(folder):
    return {p.read_bytes() for p in folder.iterdir() if p.suffix == ".png"}


def test_split_holds_out_whole_files_disjointly(tmp_path):
    src = make_folder(tmp_path / "src")
    info = split_folder(src, tmp_path / "run" / "data")
    train, held = tmp_path / "run" / "data" / "train", tmp_path / "run" / "data" / "heldout"
    assert info["train"] + info["heldout"] == 40 and info["heldout"] == 2 and info["captioned"] == 38
    assert not contents(train) & contents(held)  # identical files land on one side
    assert len(contents(train)) + len(contents(held)) == 39
    for png in held.glob("*.png"):  # only captioned images are held out, each with its caption beside it
        assert png.with_suffix(".txt").read_text().startswith("picture ")
    assert sum(1 for p in train.glob("*.png") if not p.with_suffix(".txt").exists()) == 2
    assert split_folder(src, tmp_path / "run" / "data") == info  # kept, not redone
    assert not (tmp_path / "run" / "data.partial").exists()


def test_plan_sizes_follow_the_folder_and_the_budget():
    small = plan(1700, 90, 1.0, TEMPLATE)
    assert small.codebook == 256 and small.grid == (8, 8) and small.model["n_layer"] == 4
    assert small.model["grid_rows"] == 8 and small.retriever_batch == 192
    assert 30 * 60 < sum(small.seconds.values()) < 70 * 60
    longer = plan(1700, 90, 4.0, TEMPLATE)
    assert 3.5 < longer.steps / small.steps < 4.5 and longer.codebook == small.codebook
    large = plan(50_000, 2500, 8.0, TEMPLATE)
    assert large.codebook == 1024 and "n_layer" not in large.model and large.params > 2 * small.params
    assert "1700 training images, 90 held out" in small.describe()


def test_recipe_arguments(tmp_path, capsys):
    assert main(["train", "recipe", "folder", "--out", str(tmp_path / "run")]) == 1
    assert main(["train", "recipe", "shapes", str(tmp_path), "--dry-run"]) == 1
    assert main(["train", "recipe", "folder", str(tmp_path), "--out", str(tmp_path / "r"), "--install"]) == 1
    assert main(["train", "recipe", "folder", str(tmp_path), "--out", str(tmp_path / "r"), "--dry-run"]) == 1
    err = capsys.readouterr().err
    for message in ("name the folder", "takes no folder", "--install", "at least 20"):
        assert message in err


def test_training_source_validates_on_the_held_out_part(tmp_path):
    """The multi-task source reads data/heldout for its val split and records its tokenizers."""
    from engine.paths import default_image_tokenizer_dir
    from training.components import fingerprint
    from training.data.sft_source import shapes_sft

    src = make_folder(tmp_path / "src")
    run = tmp_path / "run"
    stages = folder_stages(str(src), run, 0.05)
    assert [s.name for s in stages][-1] == "export" and (run / "plan.json").is_file()
    data = tomllib.loads((run / "sft.toml").read_text())["data"]
    params = {k: v for k, v in data.items() if k != "kind"}
    params["image_tokenizer"] = params["text_tokenizer"] = None  # the shipped ones: no tokenizer trained here
    train, val = (shapes_sft(split, 256, 0, **params) for split in ("train", "val"))
    assert train.mixture.data.dataset.root == run / "data" / "train"
    assert val.mixture.data.dataset.root == run / "data" / "heldout" and len(val.mixture.data) == 2
    shipped = fingerprint("image_tokenizer", default_image_tokenizer_dir())
    assert val.trained_with["image_tokenizer"]["sha256"] == shipped
    assert val.batch(0, 0, 0, 1, 2)[0].shape == (2, 256)
