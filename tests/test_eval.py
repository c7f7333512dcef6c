"""The evaluation suite: FID, mIoU and every metric on fake models built from the real renderer, plus
the `tessera eval model` CLI on the tiny bundle."""

from __future__ import annotations

import dataclasses
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from engine.errors import UnsupportedTaskError
from training.data.instruction_data import grounded_caption, vqa_questions
from training.data.shapes import COLORS, Scene, ShapeObject, ShapesWorld, render, seg_grid
from training.data.shapes_text import canonical_position
from training.eval import suite
from training.eval.fid import fid, frechet_distance
from training.eval.judge import Judge, JudgeError

N = 12  # items per metric: enough to see 1.0 vs 0.0, small enough for two shared cores

POSITION = {canonical_position(r, c): (r, c) for r in range(3) for c in range(3)}


@pytest.fixture(scope="module")
def judge():
    try:
        return Judge.load()
    except JudgeError as exc:
        pytest.skip(f"no trained judge: {exc}")


def parse_canonical(text: str) -> Scene:
    """Invert canonical_caption: 'a large red circle at the top left and a small blue square ...'."""
    objects = []
    for part in re.split(r", | and ", text):
        _, size, color, kind, *where = part.split()
        r, c = POSITION[" ".join(where)]
        objects.append(ShapeObject(kind, color, size, r, c))
    return Scene(tuple(objects), "light grey")


def perfect_generator(prompt: str, seed: int) -> np.ndarray:
    return render(parse_canonical(prompt))


def wrong_colour_generator(prompt: str, seed: int) -> np.ndarray:
    scene = parse_canonical(prompt)
    names = list(COLORS)
    shifted = [
        dataclasses.replace(o, color=names[(names.index(o.color) + 1) % len(names)]) for o in scene.objects
    ]
    return render(Scene(tuple(shifted), scene.background))


# ---- pure functions --------------------------------------------------------------------------------
def test_fid_identical_is_zero_and_shift_is_positive():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    assert fid(a, a + 0.5) == pytest.approx(8 * 0.25, rel=1e-6)  # a pure mean shift: |d mu|^2
    assert fid(a, rng.normal(size=(500, 8))) < 0.3  # two samples of one distribution


def test_frechet_distance_closed_form():
    from scipy.linalg import sqrtm

    eye = np.eye(4)
    # N(0, I) vs N(1, 4I): |mu|^2 = 4, tr(I + 4I - 2*2I) = 4
    assert frechet_distance(np.zeros(4), eye, np.ones(4), 4 * eye) == pytest.approx(8.0)
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    c1, c2 = m1 @ m1.T, m2 @ m2.T  # non-commuting covariances: check against scipy's sqrtm
    expected = np.trace(c1 + c2 - 2 * np.real(sqrtm(c1 @ c2)))
    assert frechet_distance(np.zeros(4), c1, np.zeros(4), c2) == pytest.approx(expected, rel=1e-6)


def test_miou():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    assert suite.miou(truth, truth) == 1.0
    pred = np.array([[0, 0, 0, 1], [0, 0, 1, 1]])  # class 0: 4/5, class 1: 3/4
    assert suite.miou(pred, truth) == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert suite.miou(np.full_like(truth, 99), truth) == 0.0  # invalid ids are wrong, not ignored


def test_scene_matches_needs_count_kind_colour_and_cell():
    a = ShapeObject("circle", "red", "large", 0, 0)
    b = ShapeObject("star", "blue", "small", 2, 2)
    scene = Scene((a, b), "cream")
    assert suite.scene_matches((b, a), scene)
    assert suite.scene_matches((dataclasses.replace(a, size="small"), b), scene)  # size not required
    assert not suite.scene_matches((dataclasses.replace(a, size="small"), b), scene, with_size=True)
    assert not suite.scene_matches((a,), scene)
    assert not suite.scene_matches((a, b, ShapeObject("heart", "pink", "small", 1, 1)), scene)
    assert not suite.scene_matches((dataclasses.replace(a, color="pink"), b), scene)
    assert not suite.scene_matches((dataclasses.replace(a, row=1), b), scene)
    assert suite.objects_found((b, a), scene) == 2
    assert suite.objects_found((dataclasses.replace(a, color="pink"), b), scene) == 1  # partial credit
    assert suite.objects_found((dataclasses.replace(a, row=1),), scene) == 0


def test_cell_mask_covers_whole_token_cells():
    m = suite.cell_mask((70, 10, 100, 40), (8, 8), 64)  # x 70..100 -> cells 2..3, y 10..40 -> cells 0..1
    assert m.shape == (64, 64) and m.sum() == 4 * 64
    assert m[0:16, 16:32].all() and not m[16:, :].any()


def test_compositional_scenes_have_one_or_two_objects():
    samples = suite.compositional_scenes("heldout", 20, 64)
    assert len(samples) == 20 and all(1 <= len(s.scene.objects) <= 2 for s in samples)


# ---- metrics with fake models and the real judge ----------------------------------------------------
def test_compositional_perfect_and_wrong_colour(judge):
    samples = suite.compositional_scenes("test", N, 64)
    assert suite.compositional(perfect_generator, judge, samples)["acc"] == 1.0
    assert suite.compositional(perfect_generator, judge, samples)["size_acc"] == 1.0
    assert suite.compositional(wrong_colour_generator, judge, samples)["acc"] == 0.0
    held = suite.compositional_scenes("heldout", N, 64)
    assert suite.compositional(perfect_generator, judge, held)["acc"] == 1.0


def test_fid_of_real_sets_is_near_floor_and_blank_images_far(judge):
    test = np.stack([s.image for s in suite.compositional_scenes("test", 64, 64)])
    val = np.stack([s.image for s in suite.compositional_scenes("val", 64, 64)])
    floor = suite.fid_pair(judge, None, test, val)["fid_floor"]
    blank = np.full_like(test, 222)
    assert suite.fid_pair(judge, judge.features(blank), test, val)["fid"] > 3 * floor


def test_caption_vqa_and_segmentation_oracles():
    world = ShapesWorld("test")
    samples = [world.sample(i) for i in range(N)]
    by_image = {s.image.tobytes(): s for s in samples}
    assert suite.caption_exact(lambda im: by_image[im.tobytes()].canonical.upper() + ".", samples) == 1.0
    assert suite.caption_exact(lambda im: "a red circle", samples) < 0.5

    def oracle(im, question):
        return next(a for q, a, _ in vqa_questions(by_image[im.tobytes()].scene) if q == question)

    assert suite.vqa(oracle, samples)["acc"] == 1.0
    assert suite.vqa(lambda im, q: "two", samples)["acc"] < 0.5
    assert suite.segmentation(lambda im: seg_grid(by_image[im.tobytes()].scene), samples, 8) == 1.0
    assert suite.segmentation(lambda im: np.zeros((8, 8), np.uint8), samples, 8) < 0.5


def test_infill_metrics(judge):
    world = ShapesWorld("test")
    samples = [world.sample(i) for i in range(N)]
    perfect = suite.infill(lambda im, mask, hint: im.copy(), judge, samples, (8, 8))
    assert perfect == {"acc": 1.0, "outside_unchanged": 1.0}
    erased = suite.infill(
        lambda im, mask, hint: np.where(mask[..., None], 222, im).astype(np.uint8), judge, samples, (8, 8)
    )
    assert erased["acc"] < 0.5 and erased["outside_unchanged"] == 1.0

    def leaky(im, mask, hint):  # right inside the mask, but one bit off everywhere outside it
        out = im.copy()
        out[~mask] ^= 1
        return out

    assert suite.infill(leaky, judge, samples, (8, 8)) == {"acc": 1.0, "outside_unchanged": 0.0}


def test_editing_and_grounding(judge):
    world = ShapesWorld("test")
    pairs = [world.edit_sample(i) for i in range(N)]
    after = {p.instruction: p.after.image for p in pairs}
    assert suite.editing(lambda im, text: after[text], judge, pairs)["acc"] == 1.0
    assert suite.editing(lambda im, text: im, judge, pairs)["acc"] == 0.0  # unchanged = edit not done

    samples = [world.sample(i) for i in range(N)]
    by_caption = {}
    for s in samples:
        by_caption.setdefault(grounded_caption(s.scene), s.image)
    ideal = suite.grounding(lambda text, boxes: by_caption[text], judge, samples)
    assert ideal > 0.75  # the judge's boxes come from its per-pixel classes: close, not exact
    assert suite.grounding(lambda text, boxes: np.full((64, 64, 3), 222, np.uint8), judge, samples) == 0.0


# ---- the suite and the CLI --------------------------------------------------------------------------
class Untrained:
    """An engine trained for nothing: every task raises UnsupportedTaskError at job creation."""

    model_id = "untrained"
    vocab = SimpleNamespace(image_grid=(8, 8))
    image_tokenizer = SimpleNamespace(image_size=64, encode=lambda x: x, decode=lambda x: x)  # lossless

    def __getattr__(self, task):
        def refuse(*args, **kwargs):
            raise UnsupportedTaskError(f"this model was not trained for {task}")

        return refuse


def test_untrained_tasks_give_null_with_a_note(judge):
    out = suite.run_suite(Untrained(), judge, n=4)
    generated = set(suite.METRICS) - {"fid_floor"}
    assert all(out[m] is None for m in generated)
    assert set(out["notes"]) == generated and "not trained" in out["notes"]["vqa_acc"]
    assert out["fid_floor"] > 0  # needs no model
    assert out["details"]["tokenizer_ceiling_compositional_acc"] == 1.0  # a lossless round trip


def test_eval_model_cli_prints_every_metric(tiny_bundle, judge, capsys, tessera_home):
    from engine.cli import main

    code = main(["eval", str(tiny_bundle), "--suite", "quick", "--n", "3", "--json"])  # the short spelling
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert set(suite.METRICS) <= set(out)
    assert all(isinstance(out[m], float) for m in suite.METRICS), out["notes"]  # tiny bundle: every task
    assert out["infill_outside_unchanged"] == 1.0  # the engine composites: pixels outside the mask kept
    assert out["model_id"] and out["suite"] == "quick"


@pytest.mark.parametrize(("argv", "command", "bundle"), [
    (["eval"], "model", None),
    (["eval", "--suite", "full"], "model", None),
    (["eval", "some/bundle", "--json"], "model", "some/bundle"),
    (["eval", "model", "some/bundle"], "model", "some/bundle"),
    (["eval", "tokenizer", "--json"], "tokenizer", None),
])
def test_eval_defaults_to_the_model_suite(argv, command, bundle):
    from engine.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.eval_command == command and getattr(args, "bundle", None) == bundle


def test_eval_model_full_writes_the_ablation_report(tiny_bundle, judge, capsys, tessera_home, tmp_path):
    from engine.cli import main

    argv = [
        "eval",
        "model",
        str(tiny_bundle),
        "--suite",
        "full",
        "--n",
        "2",
        "--ablation-n",
        "2",
        "--metrics",
        "compositional_acc,fid,fid_floor",
        "--report-dir",
        str(tmp_path),
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    report = tmp_path / f"{out['model_id']}.md"
    assert out["report"] == str(report)
    text = report.read_text()
    for heading in (
        "### Strategy",
        "### CFG scale",
        "### Candidates",
        "| CFG 7 |",
        "| 8 candidates |",
        "| CD-K |",
    ):
        assert heading in text
    for plot in ("decoding", "cfg", "candidates"):
        assert (tmp_path / out["model_id"] / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_model_rejects_unknown_metric(tiny_bundle, judge, capsys):
    from engine.cli import main

    assert main(["eval", "model", str(tiny_bundle), "--metrics", "bogus"]) == 1
    assert "unknown metrics: bogus" in capsys.readouterr().err


def test_suites_decode_as_the_studio_does_unless_told(tiny_bundle, judge, capsys, monkeypatch):
    """The suites judge what an artist gets (engine/settings.py); --retrieve reports the other figure."""
    from engine.cli import main
    from engine.settings import DEFAULTS

    d = suite.Decoding()
    assert (d.cfg, d.temperature, d.top_p, d.n, d.retrieve) == (
        DEFAULTS.cfg, DEFAULTS.temperature, DEFAULTS.top_p, DEFAULTS.candidates, DEFAULTS.retrieve)
    seen = []
    run_suite = suite.run_suite

    def spy(*args, **kwargs):
        seen.append(kwargs["decoding"])
        return run_suite(*args, **kwargs)

    monkeypatch.setattr(suite, "run_suite", spy)
    assert main(["eval", str(tiny_bundle), "--n", "2", "--metrics", "caption_exact", "--retrieve", "2"]) == 0
    assert seen[-1].retrieve == 2
    assert main(["eval", str(tiny_bundle), "--n", "2", "--retrieve", "99"]) == 1
    assert "--retrieve must be an integer in 0..8" in capsys.readouterr().err
