"""Generation from a segmentation layout and from boxes: reading and checking layouts and boxes
(engine/layout.py), `Engine.from_layout`, and `tessera generate --layout / --box` on the tiny bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.errors import BadInputError
from engine.layout import PALETTE, check_box, colour_classes, layout_cells, parse_box, read_layout

pytestmark = pytest.mark.usefixtures("tessera_home")  # retrieval looks for a user library: never the real one


def test_layout_cells_take_each_cells_majority():
    grid = np.array([[0, 1], [2, 3]])
    assert np.array_equal(layout_cells(grid, (2, 2), 4), grid)
    big = np.repeat(np.repeat(grid, 5, axis=0), 5, axis=1)  # 10x10: 5x5 pixels per cell
    big[0, 0] = 3  # one stray pixel does not change its cell
    assert np.array_equal(layout_cells(big, (2, 2), 4), grid)
    odd = np.repeat(np.repeat(grid, 3, axis=0), 4, axis=1)[:5, :7]  # sizes that do not divide the grid
    assert layout_cells(odd, (2, 2), 4).shape == (2, 2)


@pytest.mark.parametrize(("layout", "message"), [
    (np.zeros((3, 8), np.int64), "the layout is 8x3: it needs at least this model's 4x4 grid"),
    (np.full((4, 4), 7), "class id 7 at x=0, y=0; this model has classes 0-6"),
    (np.zeros((4, 4), np.float32), "2-D array of class ids"),
])
def test_layout_cells_refuse_bad_layouts(layout, message):
    with pytest.raises(BadInputError, match=message):
        layout_cells(layout, (4, 4), 7)


def test_colour_layouts_read_back_and_unknown_colours_are_named():
    classes = np.array([[0, 1, 2], [3, 4, 6]])
    rgb = PALETTE[classes].copy()
    rgb[0, 1] += 5  # within the tolerance of a lossy save
    assert np.array_equal(colour_classes(rgb, 7), classes)
    rgb[1, 2] = (12, 200, 3)
    message = r"1 pixels have colours that are no class colour \(e.g. #0cc803 at x=2, y=1\); classes 0-6"
    with pytest.raises(BadInputError, match=message):
        colour_classes(rgb, 7)


def test_read_layout_files(tmp_path):
    classes = np.array([[0, 1, 1, 0], [0, 2, 2, 0], [5, 5, 6, 6], [0, 0, 0, 0]], np.uint8)
    Image.fromarray(PALETTE[classes]).save(tmp_path / "colour.png")
    Image.fromarray(classes).save(tmp_path / "ids.png")  # what `tessera segment` writes as OUT.classes.png
    np.save(tmp_path / "grid.npy", classes.astype(np.int64))
    for name in ("colour.png", "ids.png", "grid.npy"):
        assert np.array_equal(read_layout(tmp_path / name, 7), classes), name
    Image.fromarray(np.full((4, 4, 3), 200, np.uint8)).save(tmp_path / "grey.png")  # grey 200: no class id
    with pytest.raises(BadInputError, match="16 pixels have colours that are no class colour"):
        read_layout(tmp_path / "grey.png", 7)
    np.save(tmp_path / "floats.npy", np.zeros((4, 4)))
    with pytest.raises(BadInputError, match="a class grid is a 2-D array of ints"):
        read_layout(tmp_path / "floats.npy", 7)
    with pytest.raises(BadInputError, match="no such file"):
        read_layout(tmp_path / "missing.npy", 7)


def test_boxes_parse_and_stay_on_the_grid():
    assert parse_box("a red star:10, 20,90,120") == ("a red star", (10, 20, 90, 120))
    assert parse_box("x:y:0,0,255,255") == ("x:y", (0, 0, 255, 255))  # the last colon splits
    for text in ("a red star", "a red star:1,2,3", ":1,2,3,4", "star:1.5,2,3,4"):
        with pytest.raises(BadInputError, match="expected LABEL:x0,y0,x1,y1"):
            parse_box(text)
    for box in ((0, 0, 256, 10), (-1, 0, 10, 10), (50, 0, 10, 10)):
        with pytest.raises(BadInputError, match="off the 0-255 grid or inside out"):
            check_box("star", box)


@pytest.fixture(scope="module")
def engine(tiny_bundle, tmp_path_factory):
    from engine.engine import Engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TESSERA_HOME", str(tmp_path_factory.mktemp("home")))
        yield Engine.load(tiny_bundle)


def test_engine_from_layout(engine):
    assert "layout" in engine.tasks
    grid = np.array([[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 4, 4], [0, 0, 4, 4]])
    first = engine.from_layout(grid, "a red circle and a blue star", n=2, seed=5).result()
    assert first.task == "layout" and len(first.candidates) == 2
    assert first.settings["layout"] == grid.tolist() and first.settings["prompt"].startswith("a red circle")
    assert first.candidates[0].image.shape == (16, 16, 3)
    again = engine.from_layout(np.repeat(np.repeat(grid, 4, 0), 4, 1), "a red circle and a blue star", n=2,
                               seed=5).result()  # a pixel map of the same layout: the same images
    pairs = zip(first.candidates, again.candidates, strict=True)
    assert all(np.array_equal(a.image, b.image) for a, b in pairs)
    bare = engine.from_layout(grid, seed=5).result()  # no prompt: follow the layout alone, unguided
    assert bare.settings["prompt"] == "" and bare.settings["cfg"] is None
    with pytest.raises(BadInputError, match="needs at least this model's 4x4 grid"):
        engine.from_layout(np.zeros((2, 2), np.int64))


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_generate_from_layout_and_boxes(tiny_bundle, tmp_path, capsys):
    bundle = ["--bundle", str(tiny_bundle), "-q"]
    classes = np.zeros((16, 16), np.uint8)
    classes[2:10, 2:10] = 1
    Image.fromarray(PALETTE[classes]).save(tmp_path / "layout.png")
    out = tmp_path / "out.png"
    code, stdout, _ = _run(["generate", "a red circle", "--layout", str(tmp_path / "layout.png"), "-n", "2",
                            "--seed", "3", "-o", str(out), "--json", *bundle], capsys)
    assert code == 0
    result = json.loads(stdout)
    assert result["files"] == [str(out), str(tmp_path / "out-1.png")]
    from engine.pngmeta import read_params

    meta = read_params(out)
    assert meta["task"] == "layout"
    assert meta["settings"]["layout"] == layout_cells(classes, (4, 4), 7).tolist()
    code, stdout, _ = _run(["generate", "a red star", "--box", "red star:10,20,120,200", "--box",
                            "blue square:130,0,255,100", "-o", str(tmp_path / "boxes.png"), *bundle], capsys)
    assert code == 0 and stdout.strip() == str(tmp_path / "boxes.png")
    assert read_params(tmp_path / "boxes.png")["settings"]["boxes"] == [["red star", [10, 20, 120, 200]],
                                                                       ["blue square", [130, 0, 255, 100]]]


@pytest.mark.parametrize(("make", "extra", "message"), [
    (lambda: np.zeros((2, 2), np.uint8), [], "the layout is 2x2: it needs at least this model's 4x4 grid"),
    (lambda: np.full((8, 8, 3), (12, 200, 3), np.uint8), [], "64 pixels have colours that are no class"),
    (None, ["--box", "star:0,0,300,10"], "box (0, 0, 300, 10) for 'star' is off the 0-255 grid"),
    (None, ["--box", "star"], "expected LABEL:x0,y0,x1,y1"),
    (lambda: np.zeros((8, 8), np.uint8), ["--box", "star:0,0,10,10"], "use one"),
])
def test_cli_layout_and_box_errors_are_one_line(tiny_bundle, tmp_path, capsys, make, extra, message):
    argv = ["generate", "a star", "-o", str(tmp_path / "o.png"), "--bundle", str(tiny_bundle), *extra]
    if make is not None:
        Image.fromarray(make()).save(tmp_path / "layout.png")
        argv += ["--layout", str(tmp_path / "layout.png")]
    code, _, err = _run(argv, capsys)
    assert code == 1 and message in err
    assert err.startswith("tessera: error:") and err.count("\n") == 1 and not (tmp_path / "o.png").exists()
