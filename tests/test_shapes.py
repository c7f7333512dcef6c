"""Shapes World: determinism, splits, caption truth, masks and boxes, edits, rendering sizes."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from engine.errors import BadInputError
from training.data import shapes as S
from training.data.shapes_text import COLOR_WORDS, KIND_WORDS, POSITION_LABELS, SIZE_WORDS


def test_vocabulary_contract():
    assert len(S.KINDS) >= 5 and len(S.COLORS) == 8 and S.SIZES == ("small", "medium", "large")
    assert ("background", *S.KINDS) == S.SEG_CLASSES
    assert all(c in S.COLORS and k in S.KINDS for c, k in S.HELDOUT_PAIRS)
    # glyphs are large enough for an 8x8 VQ grid to see them and small enough for their cell
    assert S.SIZE_FRACTION["small"] * 64 >= 12 and S.SIZE_FRACTION["large"] * 64 <= 28
    rgb = np.array(list(S.COLORS.values()), float)
    dists = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb)) * 1e9
    assert dists.min() > 60, "object colours too close to each other"
    for spec, _ in S.BACKGROUNDS.values():
        for bg in spec[1:]:
            assert np.linalg.norm(rgb - np.array(bg), axis=-1).min() > 90, (
                "object colour too close to a background"
            )


def test_same_seed_same_bytes_and_seeds_differ():
    a, b = S.ShapesWorld("train", seed=3), S.ShapesWorld("train", seed=3)
    for i in (0, 1, 17, 2**31 - 1):
        sa, sb = a.sample(i), b.sample(i)
        assert sa.image.tobytes() == sb.image.tobytes() and sa.mask.tobytes() == sb.mask.tobytes()
        assert (sa.caption, sa.canonical, sa.boxes, sa.scene) == (
            sb.caption,
            sb.canonical,
            sb.boxes,
            sb.scene,
        )
        ea, eb = a.edit_sample(i), b.edit_sample(i)
        assert ea.instruction == eb.instruction and ea.after.image.tobytes() == eb.after.image.tobytes()
    assert np.array_equal(a.batch([0, 1, 17]), np.stack([a.sample(i).image for i in (0, 1, 17)]))
    other = S.ShapesWorld("train", seed=4)
    assert sum(a.scene(i) != other.scene(i) for i in range(50)) >= 45


def test_splits_are_distinct_streams_and_heldout_pairs_stay_out():
    worlds = {s: S.ShapesWorld(s, seed=0) for s in S.SPLITS}
    scenes = {s: [w.scene(i) for i in range(1500 if s == "train" else 400)] for s, w in worlds.items()}
    for s, t in (("train", "val"), ("val", "test"), ("test", "heldout"), ("train", "test")):
        assert sum(a != b for a, b in zip(scenes[s], scenes[t], strict=False)) >= 390
    for split in ("train", "val", "test"):
        for sc in scenes[split]:
            assert not {(o.color, o.kind) for o in sc.objects} & S.HELDOUT_PAIRS
    for sc in scenes["heldout"]:
        assert {(o.color, o.kind) for o in sc.objects} & S.HELDOUT_PAIRS
    seen = {(o.color, o.kind) for sc in scenes["heldout"] for o in sc.objects}
    assert seen >= S.HELDOUT_PAIRS
    train = worlds["train"]
    for i in range(300):  # edits (recolour, add) must not smuggle a held-out pair into training
        e = train.edit_sample(i)
        assert not {(o.color, o.kind) for o in e.after.scene.objects} & S.HELDOUT_PAIRS
    with pytest.raises(IndexError):
        worlds["val"].sample(len(worlds["val"]))


def _lexicon():
    entries = [(w, ("color", c)) for c, ws in COLOR_WORDS.items() for w in ws] + [
        ("gold", ("color", "yellow"))
    ]
    entries += [(w, ("kind", k)) for k, ws in KIND_WORDS.items() for w in ws]
    entries += [(w, ("size", s)) for s, ws in SIZE_WORDS.items() for w in ws]
    entries += [(w, ("pos", cell)) for cell, ws in POSITION_LABELS.items() for w in ws]
    entries.sort(key=lambda e: -len(e[0]))  # longest match first: "top left" before "top"
    return entries


LEXICON = _lexicon()


def mentions(text: str) -> list[tuple[str, object]]:
    """(type, value) of every attribute word in order of appearance, longest match first."""
    found, taken = [], np.zeros(len(text), bool)
    for word, meaning in LEXICON:
        for m in re.finditer(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text):
            if not taken[m.start() : m.end()].any():
                taken[m.start() : m.end()] = True
                found.append((m.start(), meaning))
    return [meaning for _, meaning in sorted(found)]


def test_every_caption_names_each_object_truthfully():
    world = S.ShapesWorld("train", seed=5)
    templates_seen = set()
    for i in range(400):
        s = world.sample(i)
        for text in (s.caption, s.canonical):
            found = [m for m in mentions(text) if m[0] != "size"]
            assert len(found) == 3 * len(s.scene.objects), text
            groups = Counter()
            # each object is described by an adjacent colour + kind + position, in any order
            for k in range(0, len(found), 3):
                parts = dict(found[k : k + 3])
                assert set(parts) == {"color", "kind", "pos"}, text
                groups[(parts["color"], parts["kind"], parts["pos"])] += 1
            truth = Counter((o.color, o.kind, (o.row, o.col)) for o in s.scene.objects)
            assert groups == truth, (text, s.scene)
            sizes = Counter(v for t, v in mentions(text) if t == "size")
            assert not sizes - Counter(o.size for o in s.scene.objects), text
        templates_seen.add(re.sub(r"\w+", "w", s.caption)[:12])
    assert len(templates_seen) >= 10


def test_canonical_caption_is_fixed_and_in_raster_order():
    scene = S.Scene(
        (S.ShapeObject("square", "blue", "small", 1, 1), S.ShapeObject("circle", "red", "large", 0, 0)),
        "cream",
    )
    assert (
        S.canonical_caption(scene)
        == "a large red circle at the top left and a small blue square in the center"
    )


def test_masks_boxes_and_positions_agree():
    world = S.ShapesWorld("val", seed=0)
    for i in range(150):
        s = world.sample(i)
        assert s.mask.shape == (64, 64) and s.mask.dtype == np.uint8
        assert np.array_equal(s.mask, S.class_mask(s.scene)) and np.array_equal(s.image, S.render(s.scene))
        assert len(s.boxes) == len(s.scene.objects)
        for obj, box in zip(s.scene.objects, s.boxes, strict=True):
            alone = S.class_mask(S.Scene((obj,), s.scene.background), 64)
            ys, xs = np.nonzero(alone)
            assert set(np.unique(alone)) == {0, S.KINDS.index(obj.kind) + 1}
            # the box holds the mask (to 1 px: quarter-pixel rasterising) and is at most 2 px larger: a
            # thresholded mask loses the sub-pixel tips of stars, hearts and triangles
            edges = np.array([xs.min() * 4, ys.min() * 4, (xs.max() + 1) * 4 - 1, (ys.max() + 1) * 4 - 1])
            slack = (edges - np.array(box)) * np.array([1, 1, -1, -1])
            assert (slack >= -4).all() and (slack <= 8).all(), (obj, box, edges)
            # the object's centroid lies inside its named third of the image, with margin
            cx, cy = (xs.mean() + 0.5) / 64, (ys.mean() + 0.5) / 64
            assert 0.02 < cx * 3 - obj.col < 0.98 and 0.02 < cy * 3 - obj.row < 0.98
        grid = S.seg_grid(s.scene)
        assert grid.shape == (8, 8) and set(np.unique(grid)) <= set(np.unique(s.mask))
        visible = [S.KINDS.index(o.kind) + 1 for o in s.scene.objects]
        assert set(np.unique(s.mask)) <= {0, *visible}


@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_any_size_is_antialiased(size):
    scene = S.Scene(
        (S.ShapeObject("circle", "red", "large", 1, 1), S.ShapeObject("star", "blue", "small", 0, 0)),
        "stripes",
    )
    img, mask = S.render(scene, size), S.class_mask(scene, size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8 and mask.shape == (size, size)
    area = (mask == 1).mean()
    assert abs(area - np.pi * (S.SIZE_FRACTION["large"] / 2) ** 2) < 0.01
    # an antialiased edge has intermediate shades between the red disc and the background
    red = np.array(S.COLORS["red"])
    dist = np.linalg.norm(img.astype(float) - red, axis=-1)
    assert ((dist > 20) & (dist < 230)).sum() >= size // 2


def test_edits_do_what_they_claim():
    world = S.ShapesWorld("train", seed=2)
    for kind in S.EDIT_KINDS:
        for i in range(40):
            e = world.edit_sample(i, kind)
            b, a = list(e.before.scene.objects), list(e.after.scene.objects)
            assert e.kind == kind and e.instruction and a != b
            assert not np.array_equal(e.before.image, e.after.image)
            if kind == "remove":
                assert len(a) == len(b) - 1 and all(o in b for o in a)
            elif kind == "add":
                assert a[:-1] == b and (a[-1].row, a[-1].col) not in {(o.row, o.col) for o in b}
                assert any(w in e.instruction for w in COLOR_WORDS[a[-1].color])
            else:
                diff = [(x, y) for x, y in zip(b, a, strict=True) if x != y]
                assert len(a) == len(b) and len(diff) == 1
                x, y = diff[0]
                changed = {
                    f for f in ("kind", "color", "size", "row", "col") if getattr(x, f) != getattr(y, f)
                }
                expect = {"recolor": {"color"}, "move": {"row", "col"}, "resize": {"size"}}[kind]
                assert changed and changed <= expect
                if kind == "move":
                    assert (y.row, y.col) not in {(o.row, o.col) for o in b}
    with pytest.raises(BadInputError):
        S.make_edit(
            S.Scene((S.ShapeObject("heart", "red", "small", 0, 0),), "cream"),
            "remove",
            np.random.default_rng(0),
        )
