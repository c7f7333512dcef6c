"""Sequence formats (docs/architecture.md): documents, the CM3 causal-masked transform, prompts, grid cells.

Every function takes and returns numpy int64 arrays of ids already in the `Vocab` id space.

    caption-image document     T <break> I            image-caption document   I <break> T
    retrieval-augmented        <eos> R1 <eos> R2 <eos> Q <eos>
    CM3 transform of a doc     d0 <mask:0> d1 <mask:1> d2 <infill> <mask:0> s0 <mask:1> s1
    text -> image prompt       <eos> T <break>                      (then exactly H*W image ids)
    captioning by infilling    <eos> <mask:0> <break> I <infill> <mask:0>     (then text, <eos>)

`cm3_transform` does not append `<eos>`: the document boundary belongs to the sequence that
contains it (`ra_sequence` or `sequence`), which closes the CM3 tail as docs/architecture.md says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import BadInputError
from engine.vocab import NUM_MASKS, Vocab

MAX_SPANS = NUM_MASKS


def _ids(x) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).reshape(-1)


def _check_image(vocab: Vocab, image_ids, name: str = "image") -> np.ndarray:
    arr = _ids(image_ids)
    if arr.size != vocab.image_tokens_per_image or not np.all(vocab.is_image(arr)):
        raise BadInputError(
            f"{name} must be exactly {vocab.image_tokens_per_image} image token ids "
            f"({vocab.image_offset}..{vocab.seg_offset - 1}), got {arr.size} ids"
        )
    return arr


def _check_text(vocab: Vocab, text_ids, name: str = "text") -> np.ndarray:
    arr = _ids(text_ids)
    if not np.all(vocab.is_text(arr)):
        raise BadInputError(f"{name} must be text token ids ({vocab.text_offset}..{vocab.image_offset - 1})")
    return arr


def _cat(*parts) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1) for p in parts])


# -- documents -------------------------------------------------------------------------------
def caption_image_doc(vocab: Vocab, text_ids, image_ids) -> np.ndarray:
    """`T <break> I`: the caption conditions the image."""
    return _cat(_check_text(vocab, text_ids), [vocab.brk], _check_image(vocab, image_ids))


def image_caption_doc(vocab: Vocab, text_ids, image_ids) -> np.ndarray:
    """`I <break> T`: image first, so the model also learns image -> text. Same arguments as
    `caption_image_doc` (text, image), only the order in the document differs."""
    return _cat(_check_image(vocab, image_ids), [vocab.brk], _check_text(vocab, text_ids))


def sequence(vocab: Vocab, doc) -> np.ndarray:
    """`<eos> D <eos>`: one document as a training sequence (ra_sequence with nothing retrieved)."""
    return ra_sequence(vocab, [], doc)


def ra_sequence(vocab: Vocab, retrieved_docs: Sequence, query_doc) -> np.ndarray:
    """`<eos> R1 <eos> R2 <eos> Q <eos>`. All parts get the same loss weight (CM3Leon §2.2)."""
    parts: list = []
    for doc in [*retrieved_docs, query_doc]:
        arr = _ids(doc)
        if np.any(arr == vocab.eos):
            raise BadInputError("a document inside a retrieval-augmented sequence must not contain <eos>")
        parts += [[vocab.eos], arr]
    return _cat(*parts, [vocab.eos])


# -- CM3 causal-masked transform ---------------------------------------------------------------
def _content_mask(vocab: Vocab, doc: np.ndarray) -> np.ndarray:
    """Tokens a span may cover: everything except specials (so never <break>/<eos>/<pad>)."""
    return doc >= vocab.num_specials


def sample_spans(vocab: Vocab, doc, rng: np.random.Generator, n: int | None = None) -> list[tuple[int, int]]:
    """Non-overlapping half-open spans [a, b) of content tokens, sorted by position.

    n ~ clamp(Poisson(1), 1, 16) unless given. Each span is drawn like CM3 (two uniform endpoints)
    but inside one free gap: a maximal run of content tokens not yet covered, picked with
    probability proportional to its length. Gaps end at every special token, so a span never
    crosses or contains <break>. Fewer than n spans come back only when no free token is left.
    """
    doc = _ids(doc)
    if n is None:
        n = int(np.clip(rng.poisson(1.0), 1, MAX_SPANS))
    if not 1 <= n <= MAX_SPANS:
        raise BadInputError(f"number of spans must be in 1..{MAX_SPANS}, got {n}")
    free = _content_mask(vocab, doc)
    if not free.any():
        raise BadInputError("document has no text, image or segmentation tokens to mask")
    spans: list[tuple[int, int]] = []
    for _ in range(n):
        if not free.any():
            break
        # gaps = maximal runs of free positions
        padded = np.concatenate([[False], free, [False]])
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        starts, ends = edges[0::2], edges[1::2]
        lengths = ends - starts
        g = rng.choice(len(starts), p=lengths / lengths.sum())
        a = b = 0
        while a == b:  # two uniform endpoints, redrawn until the span is non-empty
            a, b = sorted(int(x) for x in rng.integers(0, lengths[g] + 1, size=2))
        a, b = int(starts[g]) + a, int(starts[g]) + b
        free[a:b] = False
        spans.append((a, b))
    return sorted(spans)


def cm3_transform(vocab: Vocab, doc, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    """Cut spans out of `doc`, put `<mask:i>` in their place, append `<infill>` and each
    `<mask:i> span_i` in order. Deterministic for a seeded `rng`. See `sample_spans`."""
    doc = _ids(doc)
    if np.any(vocab.is_mask(doc)) or np.any(doc == vocab.infill):
        raise BadInputError("document already contains <mask:i> or <infill> tokens")
    return apply_spans(vocab, doc, sample_spans(vocab, doc, rng, n))


def apply_spans(vocab: Vocab, doc, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """The CM3 layout for given sorted, non-overlapping spans (also used to cut out one chosen span,
    e.g. a condition dropped for classifier-free guidance)."""
    doc = _ids(doc)
    head: list = []
    tail: list = [[vocab.infill]]
    pos = 0
    for i, (a, b) in enumerate(spans):
        if not pos <= a < b <= len(doc):
            raise BadInputError(f"span {(a, b)} is empty, out of order or outside the document")
        if not np.all(_content_mask(vocab, doc[a:b])):
            raise BadInputError(f"span {(a, b)} covers a special token")
        head += [doc[pos:a], [vocab.mask(i)]]
        tail += [[vocab.mask(i)], doc[a:b]]
        pos = b
    head.append(doc[pos:])
    return _cat(*head, *tail)


def recover(vocab: Vocab, masked) -> np.ndarray:
    """Inverse of `cm3_transform`: put every span back in place of its sentinel."""
    masked = _ids(masked)
    infill_at = np.flatnonzero(masked == vocab.infill)
    if infill_at.size == 0:
        if np.any(vocab.is_mask(masked)):
            raise BadInputError("sequence has <mask:i> sentinels but no <infill>")
        return masked.copy()
    if infill_at.size > 1:
        raise BadInputError("sequence has more than one <infill>")
    head, tail = masked[: infill_at[0]], masked[infill_at[0] + 1 :]
    head_masks = np.flatnonzero(vocab.is_mask(head))
    tail_masks = np.flatnonzero(vocab.is_mask(tail))
    n = head_masks.size
    if n == 0:
        raise BadInputError("sequence has <infill> but no <mask:i> sentinels")
    expected = np.arange(n) + vocab.mask(0)
    if (
        tail_masks.size != n
        or tail_masks[0] != 0
        or not np.array_equal(head[head_masks], expected)
        or not np.array_equal(tail[tail_masks], expected)
    ):
        raise BadInputError("sentinels before and after <infill> do not match <mask:0>..<mask:n-1> in order")
    spans = np.split(tail, tail_masks[1:])
    out: list = []
    pos = 0
    for i, at in enumerate(head_masks):
        out += [head[pos:at], spans[i][1:]]
        pos = at + 1
    out.append(head[pos:])
    return _cat(*out)


def loss_weights(vocab: Vocab, targets) -> np.ndarray:
    """float32 weights of the same shape: 0 where the target is a <mask:i> sentinel or <pad>, else 1.

    Elementwise, so `loss_weights(vocab, seq)[1:]` are the weights of the targets `seq[1:]`."""
    targets = np.asarray(targets, dtype=np.int64)
    return ((targets != vocab.pad) & ~vocab.is_mask(targets)).astype(np.float32)


# -- grid cells ------------------------------------------------------------------------------------
def grid_cells(is_grid: np.ndarray, ids, cells_per_image: int, last: np.ndarray | None = None) -> np.ndarray:
    """(B, T) int64: the grid cell 1..H*W of every grid token (Vocab.is_grid), counted along its run of
    consecutive grid tokens in raster order (a run longer than H*W starts a new image), 0 for every other
    token. is_grid: bool lookup over the vocabulary. last (B,): the cell of the token just before
    ids[:, 0], when decoding continues a sequence (0 = not a grid token)."""
    ids = np.asarray(ids, dtype=np.int64)
    grid = is_grid[ids]
    index = np.arange(1, ids.shape[-1] + 1)
    last_other = np.maximum.accumulate(np.where(grid, 0, index), axis=-1)
    run = index - last_other
    if last is not None:  # no other token yet: the run started before ids
        run = np.where(last_other == 0, run + np.asarray(last, np.int64)[:, None], run)
    return np.where(grid, (run - 1) % cells_per_image + 1, 0)


# -- prompts for the engine --------------------------------------------------------------------
def text_to_image_prompt(vocab: Vocab, text_ids) -> np.ndarray:
    """`<eos> T <break>`; the model then writes exactly H*W image ids."""
    return _cat([vocab.eos], _check_text(vocab, text_ids), [vocab.brk])


def unconditional_image_prompt(vocab: Vocab) -> np.ndarray:
    """`<eos> <mask:0> <break>`: the classifier-free-guidance stream with the condition masked out.
    It is the CM3 transform of a caption-image document whose whole caption is the span."""
    return np.array([vocab.eos, vocab.mask(0), vocab.brk], dtype=np.int64)


def caption_prompt(vocab: Vocab, image_ids) -> np.ndarray:
    """`<eos> <mask:0> <break> I <infill> <mask:0>`; the model then writes the caption and <eos>."""
    return _cat(
        [vocab.eos, vocab.mask(0), vocab.brk], _check_image(vocab, image_ids), [vocab.infill, vocab.mask(0)]
    )


# -- parsing generated sequences ---------------------------------------------------------------

def take_until_stop(vocab: Vocab, ids) -> tuple[np.ndarray, bool]:
    """The ids before the first <eos>/<break>/<pad>, and whether such a stop was found."""
    ids = _ids(ids)
    stop = np.flatnonzero((ids == vocab.eos) | (ids == vocab.brk) | (ids == vocab.pad))
    return (ids[: stop[0]], True) if stop.size else (ids, False)


def generated_text_bpe(vocab: Vocab, ids) -> np.ndarray:
    """BPE ids of generated text: everything before the first stop, which must all be text."""
    head, _ = take_until_stop(vocab, ids)
    return vocab.to_bpe(head)


@dataclass(frozen=True)
class Part:
    modality: str  # "text" | "image" | "seg" | "empty" | "mixed"
    ids: np.ndarray


def split_parts(vocab: Vocab, seq) -> list[Part]:
    """Split a sequence at <break> and <eos> into parts, each labelled with its modality
    ("mixed" when it holds several kinds or other specials, e.g. a CM3 sentinel)."""
    seq = _ids(seq)
    cuts = np.flatnonzero((seq == vocab.brk) | (seq == vocab.eos))
    parts = []
    for chunk in np.split(seq, cuts):
        chunk = chunk[1:] if chunk.size and chunk[0] in (vocab.brk, vocab.eos) else chunk
        if chunk.size == 0:
            continue
        kinds = {name for name, test in (("text", vocab.is_text), ("image", vocab.is_image),
                                         ("seg", vocab.is_seg)) if np.all(test(chunk))}
        parts.append(Part(kinds.pop() if kinds else "mixed", chunk))
    return parts
