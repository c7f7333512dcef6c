"""Bad input at the CLI: a one-line error naming the input, exit status non-zero, nothing half-written."""

from __future__ import annotations

import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from engine.bundle import CONFIG_FILE, Bundle, write_manifest
from engine.cli import build_parser, main
from engine.errors import BundleError


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("tessera: error:") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def test_info_refuses_a_decompression_bomb_a_folder_and_keeps_control_characters_off_the_terminal(
        tmp_path, capsys):
    bomb = tmp_path / "bomb.png"  # a header claiming 400 M pixels (Pillow refuses it before decoding)
    header = b"IHDR" + struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + header
                     + struct.pack(">I", zlib.crc32(header)) + b"\0\0\0\0IEND\xaeB`\x82")
    assert main(["info", str(bomb)]) == 1
    err = _error(capsys)
    assert "bomb.png" in err and "too many pixels" in err
    assert main(["info", str(tmp_path)]) == 1
    assert "is a folder" in _error(capsys)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("tessera", json.dumps({"prompt": "a red\x1b[2J circle\x07\r", "seed": 3}))
    png = tmp_path / "ctl.png"
    Image.new("RGB", (4, 4)).save(png, pnginfo=info)
    assert main(["info", str(png)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "a red\\x1b[2J circle\\x07\\r" in out


@pytest.mark.parametrize("command", [
    ["inpaint", "IMG", "--mask", "IMG", "x", "-o"],
    ["segment", "IMG", "-o"],
    ["edit", "IMG", "make it blue", "-o"],
])
def test_an_output_that_is_a_folder_or_not_png_is_refused_before_any_work(command, picture, tmp_path, capsys):
    argv = [str(picture) if a == "IMG" else a for a in command]
    folder = tmp_path / "out"
    folder.mkdir()
    before = sorted(tmp_path.rglob("*"))
    assert main([*argv, str(folder), "--bundle", str(tmp_path / "no-bundle")]) == 1
    assert "is a folder" in _error(capsys)
    assert main([*argv, str(tmp_path / "out.jpg"), "--bundle", str(tmp_path / "no-bundle")]) == 1
    assert "out.jpg" in _error(capsys)
    assert sorted(tmp_path.rglob("*")) == before


def test_generate_refuses_a_jpg_name(tmp_path, capsys):
    assert main(["generate", "a red circle", "-o", str(tmp_path / "out.jpg")]) == 1
    assert ".png" in _error(capsys)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option", [
    ["--top-p", "2"], ["--top-p", "1e9"], ["--top-p", "nan"], ["--top-p", "0"],
    ["--temperature", "nan"], ["--temperature", "inf"], ["--temperature", "0"],
    ["--cfg", "1e9"], ["--cfg", "nan"], ["--cfg", "-1"],
])
def test_sampling_values_out_of_range_are_refused(option, tiny_bundle, tmp_path, capsys):
    out = tmp_path / "o.png"
    assert main(["generate", "a red circle", *option, "-o", str(out), "--bundle", str(tiny_bundle)]) == 1
    err = _error(capsys)
    assert option[0].removeprefix("--") in err and "Argmax" not in err
    assert not out.exists()


def _tampered(tiny_bundle, tmp_path, change) -> str:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    change(bundle)
    write_manifest(bundle)  # re-hashed: only the content is wrong
    return str(bundle)


@pytest.mark.parametrize("model", [{"n_layer": -3}, {"d_model": 1e9}, {"d_model": 10**9}, {"n_layer": 5}])
def test_a_config_that_does_not_describe_the_model_is_refused(model, tiny_bundle, picture, tmp_path, capsys):
    def change(bundle):
        config = json.loads((bundle / CONFIG_FILE).read_text())
        config["model"].update(model)
        (bundle / CONFIG_FILE).write_text(json.dumps(config))

    bundle = _tampered(tiny_bundle, tmp_path, change)
    assert main(["caption", str(picture), "--bundle", bundle]) == 1
    assert CONFIG_FILE in _error(capsys)


@pytest.mark.parametrize("arrays", [
    {"text_bytes": np.array([b"x", None], dtype=object)},  # an object array (would need unpickling)
    {"wrong": np.zeros(3)},
])
def test_a_damaged_document_table_is_refused(arrays, tiny_bundle, tmp_path):
    def change(bundle):
        with open(bundle / "memory" / "table.npz", "wb") as f:
            np.savez(f, **arrays)

    bundle = _tampered(tiny_bundle, tmp_path, change)
    from engine.engine import Engine

    with pytest.raises(BundleError, match="table.npz"):
        Engine.load(bundle, device="cpu")
    assert Bundle.load(bundle)  # the manifest itself is fine


@pytest.mark.parametrize("size", ["0", "-5", "100000", "x"])
def test_data_check_refuses_a_silly_size(size, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["data", "check", str(tmp_path), "--size", size])
    assert exit_.value.code == 2
    assert "--size" in capsys.readouterr().err


def test_inpaint_mask_white_regenerates_blue_does_not(tmp_path):
    from engine.gen_commands import _load_mask

    pixels = np.array([[[255, 255, 255], [0, 0, 255], [255, 0, 0], [200, 200, 200], [0, 0, 0]]], np.uint8)
    Image.fromarray(pixels).save(tmp_path / "m.png")
    assert _load_mask(tmp_path / "m.png").tolist() == [[True, False, False, True, False]]


def test_segment_help_names_the_files_it_writes(tiny_bundle, picture, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert main(["segment", str(picture), "-o", str(tmp_path / "seg.png"), "--bundle", str(tiny_bundle),
                 "--json"]) == 0
    written = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("seg"))
    assert written == ["seg.classes.npy", "seg.classes.png", "seg.png"]
    assert all(name in help_text for name in written)
