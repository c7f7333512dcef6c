"""Mask arithmetic (app/mask.py): brushes, regions, feathering, and bit-exact inpaint compositing."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

from app import mask as M
from engine.errors import BadInputError
from engine.tasks import compositor, pixel_mask


def test_hard_and_soft_brush_kernels():
    hard = M.brush_kernel(8, 1.0)
    soft = M.brush_kernel(8, 0.0)
    assert hard.shape == soft.shape == (17, 17)
    assert hard[8, 8] == soft[8, 8] == 1.0
    assert hard[8, 8 + 6] == 1.0 and 0.0 < soft[8, 8 + 6] < 0.5  # soft falls off long before the rim
    assert hard[0, 0] == soft[0, 0] == 0.0  # the corner is outside the circle


def test_stamp_takes_the_max_so_overlapping_dabs_do_not_build_up():
    mask = np.zeros((32, 32), np.uint8)
    k = M.brush_kernel(6, 0.0)
    M.stamp(mask, 16, 16, k)
    once = mask.copy()
    M.stamp(mask, 16, 16, k)
    assert np.array_equal(mask, once)
    assert mask[16, 16] == 255


def test_eraser_removes_paint_and_stamp_clips_at_the_border():
    mask = np.full((20, 20), 255, np.uint8)
    dirty = M.stamp(mask, 0, 0, M.brush_kernel(5, 1.0), erase=True)
    assert dirty == (0, 0, 6, 6)
    assert mask[0, 0] == 0 and mask[19, 19] == 255
    assert M.stamp(mask, -50, -50, M.brush_kernel(5, 1.0)) is None


def test_stroke_leaves_no_gaps_between_far_apart_points():
    mask = np.zeros((40, 200), np.uint8)
    M.stamp(mask, 10, 20, M.brush_kernel(4, 1.0))
    M.stroke(mask, (10, 20), (190, 20), M.brush_kernel(4, 1.0))
    assert (mask[20, 10:191] == 255).all()
    assert mask[5, 100] == 0


def test_invert_twice_is_identity():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    assert np.array_equal(M.invert(M.invert(mask)), mask)
    assert M.invert(np.zeros((2, 2), np.uint8)).tolist() == [[255, 255], [255, 255]]


def test_region_cells_are_the_connected_cells_of_one_class():
    grid = np.array([[1, 1, 0, 2],
                     [0, 1, 0, 2],
                     [1, 0, 0, 2],
                     [1, 1, 0, 0]])
    cells = M.region_cells(grid, 0, 0)
    assert cells.tolist() == [[True, True, False, False],
                              [False, True, False, False],
                              [False, False, False, False],
                              [False, False, False, False]]  # the other class-1 blob is not connected
    assert M.region_cells(grid, 3, 0).sum() == 3
    big = M.cells_to_mask(M.region_cells(grid, 0, 3), (8, 8))
    assert big.shape == (8, 8) and big[0, 6] == 255 and big[0, 5] == 0 and big[6, 6] == 0


def test_to_alpha_averages_each_image_pixel():
    mask = np.zeros((8, 8), np.uint8)
    mask[0:4, 0:4] = 255  # the whole first image pixel
    mask[0:2, 4:8] = 255  # half of the second
    alpha = M.to_alpha(mask, (2, 2))
    assert alpha.tolist() == [[1.0, 0.5], [0.0, 0.0]]
    with pytest.raises(ValueError):
        M.to_alpha(np.zeros((9, 9), np.uint8), (2, 2))


def test_feather_softens_inwards_only():
    alpha = np.zeros((32, 32), np.float32)
    alpha[8:24, 8:24] = 1.0
    soft = M.feather(alpha, 4)
    assert (soft <= alpha + 1e-6).all()  # never outside the mask
    assert soft[16, 16] == pytest.approx(1.0)  # deep inside unchanged
    assert 0.0 < soft[8, 16] < 1.0  # the edge is blended
    assert np.array_equal(M.feather(alpha, 0), alpha)


@pytest.mark.parametrize("seed", range(5))
def test_the_engines_compositor_blends_a_feathered_brush_mask(seed):
    """The studio's painted, feathered mask goes to the engine as coverage; the engine composites once:
    unmasked pixels bit for bit, fully masked ones the model's, the feathered edge in between."""
    rng = np.random.default_rng(seed)
    h, w = rng.integers(16, 80, 2)
    original = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    result = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)  # already the original's size
    hi = np.zeros((h * 4, w * 4), np.uint8)
    for _ in range(3):
        M.stroke(hi, tuple(rng.uniform(0, w * 4, 2)), tuple(rng.uniform(0, w * 4, 2)),
                 M.brush_kernel(rng.uniform(3, 12), rng.uniform(0, 1)))
    alpha = pixel_mask(M.feather(M.to_alpha(hi, (h, w)), int(rng.integers(0, 5))), (h, w))
    out = compositor(original, alpha)(result)
    outside, full = alpha == 0, alpha == 1
    assert outside.any() and (~outside).any()
    for candidate, model in zip(out, result, strict=True):
        assert np.array_equal(candidate[outside], original[outside])  # bit for bit
        assert np.array_equal(candidate[full], model[full])
    edge = (alpha > 0) & (alpha < 1)
    expected = np.rint(original[edge] * (1 - alpha[edge, None]) + result[0][edge] * alpha[edge, None])
    assert np.abs(out[0][edge].astype(int) - expected).max() <= 1


def test_a_float_mask_is_coverage_in_0_1():
    with pytest.raises(BadInputError, match="coverage"):
        pixel_mask(np.full((4, 4), 1.5, np.float32), (4, 4))
    with pytest.raises(BadInputError, match="empty"):
        pixel_mask(np.zeros((4, 4), np.float32), (4, 4))
    assert pixel_mask(np.full((4, 4), 200, np.uint8), (4, 4)).max() == 1.0  # uint8 stays hard
