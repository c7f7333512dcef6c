"""The learning-efficiency design: grid cells of image tokens, documents kept apart in packed rows,
the loss on each document's output (docs/architecture.md, "Cell positions and the training layout")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.backends import GridCells, TorchBackend, cells_of
from engine.errors import BadInputError
from engine.formats import grid_cells
from engine.instructions import Task
from engine.nn.transformer import Transformer, get_preset
from engine.vocab import HOLE_MASK, Vocab
from training.data.instruction_data import InstructionData, InstructionMixture
from training.data.sft_source import PackedInstructionSource
from training.data.shapes import SEG_CLASSES
from training.text_tokenizer_train import shapes_corpus, train_text_tokenizer

torch.set_num_threads(1)
V = Vocab(text_size=300, image_size=64, seg_size=len(SEG_CLASSES), image_grid=(8, 8))
SMALL = Vocab(text_size=100, image_size=16, seg_size=3, image_grid=(2, 3))


def lookup(vocab: Vocab) -> np.ndarray:
    return np.asarray(vocab.is_grid(np.arange(vocab.size)))


# -- grid cells --------------------------------------------------------------------------------------
def test_cells_count_along_each_grid_run():
    v = SMALL
    text, hole = v.text_ids([5, 6]), v.mask(HOLE_MASK)
    ids = np.concatenate([[v.eos], text, [v.brk], v.image_ids([1, 2, 3]), [hole, hole], v.seg_ids([0]),
                          [v.brk], text, [v.brk], v.image_ids([4, 5, 6, 7, 8, 9, 10])])
    cells = grid_cells(lookup(v), ids[None], v.image_tokens_per_image)[0]
    assert cells.tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 1]
    other_masks = np.array([[v.mask(0), v.mask(14), v.infill]])
    assert not grid_cells(lookup(v), other_masks, v.image_tokens_per_image).any()


def test_decoding_one_token_at_a_time_gives_the_same_cells():
    rng = np.random.default_rng(0)
    v = SMALL
    pool = [v.brk, v.eos, *v.text_ids([1, 2]), *v.image_ids(range(16)), *v.seg_ids([0, 1])]
    ids = rng.choice(pool, (3, 40))
    whole = grid_cells(lookup(v), ids, 6)
    last, steps = None, []
    for t in range(ids.shape[1]):
        step = grid_cells(lookup(v), ids[:, t:t + 1], 6, last)
        steps.append(step[:, 0])
        last = step[:, -1]
    assert np.array_equal(np.stack(steps, 1), whole)
    split = grid_cells(lookup(v), ids[:, 17:], 6, whole[:, 16])
    assert np.array_equal(split, whole[:, 17:])


# -- the transformer ---------------------------------------------------------------------------------
def grid_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(get_preset("tiny", vocab_size=V.size, grid_rows=8, grid_cols=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.2)
            if name in ("wrow.weight", "wcol.weight"):
                p[0] = 0  # index 0: not a grid token
    return model.eval()


def test_the_grid_is_configured_whole():
    with pytest.raises(BadInputError):
        get_preset("tiny", grid_rows=8)
    with pytest.raises(BadInputError):
        get_preset("tiny", grid_rows=-1, grid_cols=-1)
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny", grid_rows=2, grid_cols=3))
    assert model.wrow.weight.shape == (3, 64) and model.wcol.weight.shape == (4, 64)
    assert not model.wrow.weight[0].any() and not model.wcol.weight[0].any()
    with pytest.raises(BadInputError, match="cells"):
        model(torch.zeros(1, 4, dtype=torch.long))


def test_cells_place_the_image_tokens():
    """The same ids at other cells give other logits; tokens outside a grid ignore the grid."""
    model = grid_model()
    seq = np.concatenate([[V.eos], V.text_ids([3, 4]), [V.brk], V.image_ids([5] * 10)])
    ids = torch.from_numpy(seq[None])
    cells = torch.from_numpy(cells_of(GridCells.of(V), ids.numpy()))
    base, _ = model(ids, cells=cells)
    shifted, _ = model(ids, cells=torch.where(cells > 0, cells + 8, cells))
    assert torch.allclose(base[:, :4], shifted[:, :4], atol=1e-6)
    assert not torch.allclose(base[:, 4:], shifted[:, 4:], atol=1e-3)


def test_a_packed_document_computes_what_it_computes_alone():
    model = grid_model(1)
    rng = np.random.default_rng(0)
    docs = [np.concatenate([[V.eos], V.text_ids(rng.integers(0, 300, n)), [V.brk],
                            V.image_ids(rng.integers(0, 64, 40)), [V.eos]]) for n in (5, 9)]
    row = np.concatenate(docs)[None]
    doc_ids = np.concatenate([np.full(len(d), i) for i, d in enumerate(docs)])[None]
    grid = GridCells.of(V)
    packed, _ = model(torch.from_numpy(row), cells=torch.from_numpy(grid(row)),
                      doc_ids=torch.from_numpy(doc_ids))
    start = 0
    for d in docs:
        alone, _ = model(torch.from_numpy(d[None]), cells=torch.from_numpy(grid(d[None])))
        assert torch.allclose(packed[0, start:start + len(d)], alone[0], atol=1e-5)
        start += len(d)


def test_torch_backend_decodes_a_grid_model_like_its_forward():
    model = grid_model(2)
    grid = GridCells.of(V)
    backend = TorchBackend(model, max_batch=2, grid=grid)
    seq = np.concatenate([[V.eos], V.text_ids([7, 8, 9]), [V.brk], V.image_ids(np.arange(20))])
    logits, state = backend.prefill(seq[None, :6])
    got = [logits[0]]
    for t in range(6, len(seq)):
        logits, state = backend.decode(seq[None, t:t + 1], state)
        got.append(logits[0])
    ref, _ = model(torch.from_numpy(seq[None]), cells=torch.from_numpy(grid(seq[None])))
    assert np.allclose(np.stack(got), ref[0, 5:].detach().numpy(), atol=1e-4)
    with pytest.raises(ValueError):
        TorchBackend(model)  # a grid model without its cells


# -- the training layout -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixture():
    tok = train_text_tokenizer(shapes_corpus(60), vocab_size=V.text_size)

    def encode(images: np.ndarray) -> np.ndarray:
        cells = images.reshape(len(images), 8, 8, 8, 8, 3).mean(axis=(2, 4)).astype(int) // 64
        return cells[..., 0] * 16 + cells[..., 1] * 4 + cells[..., 2]

    data = InstructionData(V, tok, encode, split="val", seed=0, cond_dropout=0.2)
    return InstructionMixture(data, {"t2i": 2.0, "caption": 1.0, "vqa": 1.0, "edit": 1.0}, seed=3)


def test_the_loss_covers_each_documents_output_only(mixture):
    source = PackedInstructionSource(mixture, 256, seed=3, cm3_prob=0.0, seg_classes=SEG_CLASSES)
    x, y, w, docs = source.batch(step=1, micro_step=0, rank=0, world_size=1, batch_size=4)
    assert x.shape == y.shape == w.shape == docs.shape == (4, 256)
    seen = 0
    for r in range(4):
        for d in np.unique(docs[r]):
            at = np.flatnonzero(docs[r] == d)
            if x[r, at[0]] == V.pad:
                assert not w[r, at].any(), "padding carries no loss"
                continue
            assert w[r, at].any(), "every document has an output"
            assert not w[r, at[:2]].any(), "a prompt is given, not modelled"
            assert not w[r, at[-1]], "the last position predicts the next document: no loss"
            seen += 1
    assert seen >= 4
    assert w.sum() < 0.7 * (x != V.pad).sum(), "prompts are not modelled"


def test_output_loss_matches_the_examples(mixture):
    source = PackedInstructionSource(mixture, 256, seed=3, cm3_prob=0.0, seg_classes=SEG_CLASSES)
    rng = np.random.default_rng(np.random.SeedSequence([3, 1, 0]))
    x, y, w, docs = source.batch(step=1, micro_step=0, rank=0, world_size=1, batch_size=1)
    first = source._document(int(rng.integers(0, len(mixture.data))))
    ids, out_start = first
    assert np.array_equal(x[0, : len(ids)], ids)
    expected = np.zeros(len(ids) - 1)
    expected[out_start - 1:] = 1
    expected[V.is_mask(ids[1:])] = 0
    assert np.array_equal(w[0, : len(ids) - 1], expected)
    example_tasks = {mixture.task(i) for i in range(50)}
    assert Task.T2I in example_tasks


def test_document_loss_weighs_every_document_the_same(mixture):
    """A 2-token answer weighs as much in total as a 65-token image; the same positions carry a loss."""
    kw = dict(seed=3, cm3_prob=0.0, seg_classes=SEG_CLASSES)
    x, _, per_token, docs = PackedInstructionSource(mixture, 256, **kw).batch(1, 0, 0, 1, 4)
    _, _, per_doc, _ = PackedInstructionSource(mixture, 256, loss="document", **kw).batch(1, 0, 0, 1, 4)
    assert np.array_equal(per_doc > 0, per_token > 0)
    totals = [per_doc[r, docs[r] == d].sum() for r in range(4) for d in np.unique(docs[r])
              if x[r, docs[r] == d][0] != V.pad]
    assert np.allclose(totals, 1.0)
    lengths = {int(per_token[r, docs[r] == d].sum()) for r in range(4) for d in np.unique(docs[r])}
    assert len(lengths - {0}) > 1, "the batch mixes outputs of different lengths"


def test_the_first_layout_is_kept_for_comparison(mixture):
    source = PackedInstructionSource(mixture, 256, seed=3, cm3_prob=0.25, seg_classes=SEG_CLASSES,
                                     loss="all", separate_docs=False)
    x, y, w = source.batch(step=1, micro_step=0, rank=0, world_size=1, batch_size=2)
    assert np.array_equal(w, ((y != V.pad) & ~V.is_mask(y)).astype(np.float32))
    with pytest.raises(BadInputError, match="cm3_prob"):
        PackedInstructionSource(mixture, 256, seed=3, cm3_prob=0.25, seg_classes=SEG_CLASSES)
    with pytest.raises(BadInputError, match="loss"):
        PackedInstructionSource(mixture, 256, seed=3, cm3_prob=0.0, seg_classes=SEG_CLASSES, loss="prompt")
