"""Folder datasets: every odd-but-valid image loads as RGB, every bad file is skipped and reported."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.errors import BadInputError
from training.data.commands import export_split
from training.data.folder import FolderDataset, check_folder, load_image
from training.data.shapes import ShapesWorld

GOOD = {
    "good.png": "a good png",
    "photo.jpg": "a jpeg",
    "rgba.png": "transparent",
    "palette.gif": "",
    "grey.png": "grey",
    "deep16.png": "sixteen bit",
    "cmyk.jpg": "cmyk",
    "rotated.jpg": "rotated",
    "sub/nested.png": "from nested metadata",
    "sub/deeper/inner.webp": "inner sidecar",
}
BAD = {"empty.png", "truncated.png", "text.png", "bomb.png", "sub/missing.png"}


def _make_folder(root):
    (root / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "good.png")
    Image.new("RGB", (50, 30), (200, 30, 30)).save(root / "photo.jpg", quality=95)
    Image.new("RGBA", (20, 20), (0, 0, 255, 0)).save(root / "rgba.png")  # fully transparent -> white
    Image.new("RGB", (20, 20), (0, 200, 0)).convert("P").save(root / "palette.gif")
    Image.new("L", (30, 30), 100).save(root / "grey.png")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(root / "deep16.png")  # I;16
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)  # red
    # top half red, bottom half blue; EXIF orientation 6 = "rotate 90 degrees clockwise to display"
    im = Image.new("RGB", (32, 32), (255, 0, 0))
    im.paste((0, 0, 255), (0, 16, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(root / "rotated.jpg", quality=95, exif=exif)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "sub" / "nested.png")
    Image.new("RGB", (16, 16), (9, 9, 9)).save(root / "sub" / "deeper" / "inner.webp")
    (root / "sub" / "deeper" / "inner.txt").write_text("inner sidecar\n")
    (root / "empty.png").write_bytes(b"")
    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noise.save(root / "truncated.png")
    data = (root / "truncated.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("this is not an image")
    Image.new("RGB", (100, 100)).save(root / "bomb.png")  # 10,000 pixels: over the test's limit
    meta = [{"file_name": n, "text": c} for n, c in GOOD.items() if c and not n.startswith("sub/")]
    (root / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    (root / "sub" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "nested.png", "text": "from nested metadata"}) + "\n"
        + json.dumps({"file_name": "missing.png", "text": "gone"}) + "\n"
    )
    (root / "notes.md").write_text("ignored: not an image extension")


@pytest.fixture
def folder(tmp_path):
    _make_folder(tmp_path)
    return tmp_path


def test_folder_loads_odd_images_and_skips_bad_ones(folder):
    ds = FolderDataset(folder, size=32, max_pixels=5000)
    rel = {p.relative_to(folder).as_posix(): c for p, c in ds.items}
    assert rel == GOOD
    assert {s["file"] for s in ds.report["skipped"]} == BAD
    reasons = {s["file"]: s["reason"] for s in ds.report["skipped"]}
    assert reasons["empty.png"] == "empty file" and "bomb" in reasons["bomb.png"]
    assert "not an image" in reasons["text.png"] and "missing" in reasons["sub/missing.png"]
    assert ds.report["ok"] == len(GOOD) == len(ds) and ds.report["uncaptioned"] == 1
    images = {name: ds.load(i)[0] for i, name in enumerate(rel)}
    for img in images.values():
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (images["rgba.png"] == 255).all()  # transparency composited on white
    assert np.abs(images["deep16.png"].astype(int) - 40000 // 257).max() <= 1
    assert np.abs(images["grey.png"].astype(int) - 100).max() <= 1
    assert np.abs(images["cmyk.jpg"][..., 0].mean() - 255) < 10 and images["cmyk.jpg"][..., 1:].mean() < 10
    assert images["palette.gif"][..., 1].mean() > 150
    # orientation 6: the red top half ends up on the right, the blue bottom half on the left
    rot = images["rotated.jpg"].astype(int)
    assert rot[:, 24:, 0].mean() > 200 and rot[:, :8, 2].mean() > 200
    assert ds.batch([0, 1]).shape == (2, 32, 32, 3)


def test_default_limit_accepts_the_small_image(folder):
    report = check_folder(folder)
    assert {s["file"] for s in report["skipped"]} == BAD - {"bomb.png"}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file_is_skipped(folder):
    os.chmod(folder / "good.png", 0)
    try:
        reasons = {s["file"]: s["reason"] for s in check_folder(folder)["skipped"]}
        assert "permission" in reasons["good.png"]
    finally:
        os.chmod(folder / "good.png", 0o644)


def test_bad_metadata_lines_are_reported(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\nnot json\n{"text": "x"}\n'
                                             '{"file_name": "../outside.png", "text": "x"}\n')
    ds = FolderDataset(tmp_path)
    assert ds.items[0][1] == "ok"
    assert [s["file"] for s in ds.report["skipped"]] == [f"metadata.jsonl:{n}" for n in (2, 3, 4)]
    with pytest.raises(BadInputError):
        load_image(tmp_path / "metadata.jsonl")
    with pytest.raises(BadInputError):
        FolderDataset(tmp_path / "nope")


def test_cli_check_json(folder, capsys):
    assert main(["data", "check", str(folder), "--json", "--max-pixels", "5000"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] == len(GOOD) and {s["file"] for s in report["skipped"]} == BAD
    assert main(["data", "check", str(folder)]) == 0
    assert "skipped truncated.png" in capsys.readouterr().out


def test_export_round_trips_through_the_folder_loader(tmp_path):
    out = export_split("heldout", 6, tmp_path / "export", seed=2)
    ds = FolderDataset(out, size=64)
    world = ShapesWorld("heldout", seed=2)
    assert len(ds) == 6 and not ds.report["skipped"]
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    for i, (img, text) in enumerate(ds.load(k) for k in range(6)):
        s = world.sample(i)
        assert text == s.caption == rows[i]["text"] and rows[i]["canonical"] == s.canonical
        assert rows[i]["boxes"] == [list(b) for b in s.boxes]
        assert len(rows[i]["objects"]) == len(s.scene.objects)
        assert np.array_equal(img, s.image)
    with pytest.raises(BadInputError):
        export_split("test", 2, out)  # not empty, no overwrite
    export_split("test", 2, out, overwrite=True)
    assert len(FolderDataset(out)) == 2 and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_cli_sheet(tmp_path):
    assert main(["data", "sheet", "--out", str(tmp_path / "s.png"), "--n", "3", "--seed", "1"]) == 0
    with Image.open(tmp_path / "s.png") as im:
        assert im.size[0] > 3 * 64 and im.mode == "RGB"
