import json

import numpy as np
import pytest

from engine.errors import BadInputError
from engine.vocab import NUM_MASKS, SPECIAL_NAMES, Vocab

V = Vocab(text_size=1300, image_size=512, seg_size=7, image_grid=(8, 8))


def test_layout_is_contiguous_and_in_design_order():
    assert (V.pad, V.eos, V.brk) == (0, 1, 2)
    assert [V.mask(i) for i in range(NUM_MASKS)] == list(range(3, 19))
    assert V.infill == 19 and V.num_specials == len(SPECIAL_NAMES) == 20
    assert V.text_offset == 20
    assert V.image_offset == V.text_offset + V.text_size
    assert V.seg_offset == V.image_offset + V.image_size
    assert V.size == V.seg_offset + V.seg_size == 20 + 1300 + 512 + 7
    assert V.image_tokens_per_image == 64


def test_every_id_belongs_to_exactly_one_range():
    ids = np.arange(V.size)
    special = ids < V.num_specials
    kinds = np.stack([special, V.is_text(ids), V.is_image(ids), V.is_seg(ids)])
    assert np.all(kinds.sum(axis=0) == 1)
    assert np.array_equal(np.flatnonzero(V.is_mask(ids)), np.arange(3, 19))


def test_conversions_round_trip():
    rng = np.random.default_rng(0)
    bpe = rng.integers(0, V.text_size, 50)
    codes = rng.integers(0, V.image_size, 64)
    classes = rng.integers(0, V.seg_size, 64)
    assert np.array_equal(V.to_bpe(V.text_ids(bpe)), bpe)
    assert np.array_equal(V.to_codes(V.image_ids(codes)), codes)
    assert np.array_equal(V.to_classes(V.seg_ids(classes)), classes)
    assert V.text_ids([]).dtype == np.int64 and V.text_ids([]).size == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: V.text_ids([0, 1300]), "BPE id 1300 is outside 0..1299"),
        (lambda: V.image_ids([-1]), "image code -1 is outside 0..511"),
        (lambda: V.seg_ids([7]), "segmentation class 7 is outside 0..6"),
        (lambda: V.to_codes([V.text_offset]), "token id 20 is not an image token"),
        (lambda: V.validate([5, V.size]), f"token id {V.size} at position 1 is outside 0..{V.size - 1}"),
    ],
)
def test_out_of_range_errors_name_the_id_and_the_range(call, message):
    with pytest.raises(BadInputError, match=message):
        call()


def test_mask_index_checked():
    with pytest.raises(ValueError):
        V.mask(NUM_MASKS)
    with pytest.raises(ValueError):
        Vocab(0, 512, 7)


def test_names():
    assert V.name(2) == "<break>" and V.name(V.mask(15)) == "<mask:15>" and V.name(19) == "<infill>"
    assert V.name(V.text_offset + 5) == "<text:5>"
    assert V.name(V.image_offset) == "<img:0>"
    assert V.name(V.size - 1) == "<seg:6>"


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "vocab.json"
    V.save(path)
    assert Vocab.load(path) == V
    d = json.loads(path.read_text())
    assert d["specials"] == list(SPECIAL_NAMES) and d["image_grid"] == [8, 8]
    d["specials"] = d["specials"][::-1]
    with pytest.raises(ValueError, match="specials differ"):
        Vocab.from_dict(d)
