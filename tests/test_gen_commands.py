"""The generation commands: argument parsing, output naming, overlays, `tessera info`, and end-to-end
runs of every command on the tiny bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import build_parser, main
from engine.gen_commands import candidate_paths, overlay, upsample
from engine.pngmeta import read_params, save_png

pytestmark = pytest.mark.usefixtures("tessera_home")  # retrieval looks for a user library: never the real one


def test_parser_generate_options():
    args = build_parser().parse_args(
        [
            "generate",
            "a red circle",
            "-n",
            "4",
            "--seed",
            "7",
            "-o",
            "out.png",
            "--cfg",
            "2.5",
            "--temperature",
            "0.8",
            "--top-p",
            "0.95",
            "--cdk-alpha",
            "0.1",
            "--cdk-k",
            "5",
            "--retrieve",
            "0",
        ]
    )
    assert (args.prompt, args.n, args.seed, args.out) == ("a red circle", 4, 7, Path("out.png"))
    assert (args.cfg, args.temperature, args.top_p) == (2.5, 0.8, 0.95)
    assert (args.cdk_alpha, args.cdk_k, args.retrieve, args.bundle) == (0.1, 5, 0, None)
    defaults = build_parser().parse_args(["generate", "x"])
    assert (defaults.n, defaults.seed, defaults.cfg, defaults.top_p, defaults.retrieve) == (
        1,
        None,
        3.0,
        0.9,
        None,  # the engine's default (2) for plain generation; --layout / --box retrieve nothing
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["caption", "img.png"],
        ["answer", "img.png", "what colour is the circle?"],
        ["inpaint", "img.png", "--mask", "m.png", "a blue square", "-o", "o.png"],
        ["inpaint", "img.png", "--mask", "m.png", "", "-o", "o.png"],
        ["edit", "img.png", "make the circle blue", "-o", "o.png"],
        ["segment", "img.png", "-o", "o.png"],
        ["info", "img.png"],
    ],
)
def test_parser_other_commands(argv):
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_required_outputs():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["inpaint", "img.png", "x", "-o", "o.png"])  # no --mask
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "img.png"])  # no -o


def test_candidate_paths():
    assert candidate_paths(Path("d/out.png"), 3) == [
        Path("d/out.png"),
        Path("d/out-1.png"),
        Path("d/out-2.png"),
    ]
    assert candidate_paths(Path("out"), 2) == [Path("out"), Path("out-1.png")]


def test_upsample_and_overlay():
    grid = np.array([[0, 1], [2, 0]], np.int64)
    big = upsample(grid, (4, 6))
    assert big.shape == (4, 6)
    assert (big[:2, :3] == 0).all() and (big[:2, 3:] == 1).all() and (big[2:, :3] == 2).all()
    image = np.full((4, 6, 3), 100, np.uint8)
    out = overlay(image, big)
    assert np.array_equal(out[big == 0], image[big == 0])  # background untouched
    assert not np.array_equal(out[big == 1], image[big == 1])
    assert not np.array_equal(out[big == 1][0], out[big == 2][0])  # classes get distinct colours


def test_info_reads_params(tmp_path, capsys):
    path = save_png(
        tmp_path / "x.png",
        np.zeros((8, 8, 3), np.uint8),
        {"prompt": "a red circle", "seed": 3, "settings": {"cfg": 3.0}, "model_id": "m", "task": "generate"},
    )
    assert main(["info", str(path), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["prompt"] == "a red circle" and meta["seed"] == 3 and meta["settings"] == {"cfg": 3.0}
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "prompt:   a red circle" in text and "seed:" in text and "cfg=3.0" in text


def test_info_bad_file_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("hello")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tessera: error:") and "notes.png: not an image file" in err
    assert "Traceback" not in err


# -- end to end on the tiny bundle ----------------------------------------------------------------------
def _png(path: Path, image: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def picture(tmp_path):
    rng = np.random.default_rng(0)
    return _png(tmp_path / "in.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_generate_writes_ranked_pngs_with_params(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "out.png"
    argv = [
        "generate",
        "a red circle above a blue square",
        "-n",
        "3",
        "--seed",
        "7",
        "-o",
        str(out),
        "--cfg",
        "2.5",
        "--retrieve",
        "1",
        "--bundle",
        str(tiny_bundle),
        "--json",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["files"] == [str(out), str(tmp_path / "out-1.png"), str(tmp_path / "out-2.png")]
    assert result["seed"] == 7 and result["settings"]["cfg"] == 2.5
    assert result["scores"] == sorted(result["scores"], reverse=True)
    assert "generate: done in" in captured.err
    for rank, path in enumerate(result["files"]):
        meta = read_params(path)
        assert meta["prompt"] == "a red circle above a blue square" and meta["seed"] == 7
        assert meta["rank"] == rank and meta["task"] == "generate" and meta["model_id"] == result["model_id"]
    assert main(["info", str(out)]) == 0
    assert "seed:" in capsys.readouterr().out


def test_generate_default_name_and_determinism(tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["generate", "a blue star", "--seed", "11", "--bundle", str(tiny_bundle), "-q"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == "tessera-11.png"
    from PIL import Image

    first = np.asarray(Image.open(tmp_path / "tessera-11.png"))
    assert main([*args, "-o", "again.png"]) == 0
    assert np.array_equal(first, np.asarray(Image.open(tmp_path / "again.png")))


def test_caption_answer_segment_edit(tiny_bundle, picture, tmp_path, capsys):
    bundle = ["--bundle", str(tiny_bundle)]
    assert main(["caption", str(picture), *bundle, "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["caption"], str)
    assert main(["answer", str(picture), "what colour is the circle?", *bundle, "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["answer"], str)
    seg = tmp_path / "seg.png"
    assert main(["segment", str(picture), "-o", str(seg), *bundle, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    grid = np.load(tmp_path / "seg.classes.npy")
    assert grid.shape == (4, 4) and grid.tolist() == result["grid"]
    from PIL import Image

    class_map = np.asarray(Image.open(tmp_path / "seg.classes.png"))
    assert class_map.shape == (16, 16) and np.array_equal(class_map, upsample(grid, (16, 16)))
    assert np.asarray(Image.open(seg)).shape == (16, 16, 3)
    edited = tmp_path / "edited.png"
    assert (
        main(["edit", str(picture), "make the circle blue", "-o", str(edited), "--seed", "1", *bundle]) == 0
    )
    assert np.asarray(Image.open(edited)).shape == (16, 16, 3)


def test_inpaint_command_keeps_unmasked_pixels(tiny_bundle, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    source = _png(tmp_path / "src.png", image)
    mask = np.zeros((24, 40), np.uint8)
    mask[6:14, 10:30] = 255
    mask_path = _png(tmp_path / "mask.png", mask)
    out = tmp_path / "filled.png"
    argv = [
        "inpaint",
        str(source),
        "--mask",
        str(mask_path),
        "a green heart",
        "-o",
        str(out),
        "--bundle",
        str(tiny_bundle),
        "--seed",
        "3",
        "-q",
    ]
    assert main(argv) == 0
    result = np.asarray(Image.open(out))
    keep = mask == 0
    assert result.shape == image.shape and np.array_equal(result[keep], image[keep])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", ""], "the prompt is empty"),
        (["generate", "x", "-n", "0"], "-n must be at least 1"),
        (["generate", "x", "--cdk-alpha", "0.1"], "go together"),
        (["caption", "NOTES"], "not an image file"),
        (["inpaint", "IMG", "--mask", "SMALL", "x", "-o", "o.png"], "the mask is 8x8 pixels"),
    ],
)
def test_bad_input_is_one_clear_error(tiny_bundle, picture, tmp_path, capsys, argv, message):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    small = _png(tmp_path / "small.png", np.zeros((8, 8), np.uint8))
    subst = {"NOTES": str(notes), "IMG": str(picture), "SMALL": str(small)}
    assert main([subst.get(a, a) for a in argv] + ["--bundle", str(tiny_bundle)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tessera: error:") and message in err and "Traceback" not in err


def _self_test(assets: Path) -> subprocess.CompletedProcess:
    """`tessera --self-test` as in the frozen build: neither torch nor the training package importable."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = sys.modules['training'] = None\n"
        "from engine.cli import main\n"
        "sys.exit(main(['--self-test']))\n"
    )
    env = {**os.environ, "TESSERA_ASSETS": str(assets), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)


def test_self_test_passes_without_torch(tiny_bundle, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "shapes").symlink_to(tiny_bundle)
    proc = _self_test(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[1] for line in lines[:5]] == ["load", "generate", "caption", "segment", "inpaint"]
    assert all(line.split()[2] == "ok" for line in lines[:5]) and lines[-1] == "self-test: passed"


def test_self_test_fails_cleanly_without_a_model(tmp_path):
    proc = _self_test(tmp_path)
    assert proc.returncode == 1
    assert "self-test: load     FAIL" in proc.stdout and "model bundle not found" in proc.stdout
    assert "Traceback" not in proc.stderr
