"""Job bodies: one generator per kind of output (image, text, segmentation grid), shared by the tasks.

The `Engine` validates the input, builds the prompt ids and a request eagerly (bad input raises at
job creation); a body then does the work lazily, one decode step per event:

    Retrieved (when asked)  ->  Progress after every step  ->  PartialImage after every row
    ->  Finished (candidates re-ranked by the retriever's text-image score, settings used)

Cancellation is the job's business (engine/jobs.py checks it after every event), so a body never
runs more than one decode step past `cancel()`.
"""

from __future__ import annotations

import secrets
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from engine.decode import Step, Stream, image_span, seg_span, start, text_results, text_span
from engine.errors import BadInputError
from engine.events import Candidate, Event, Finished, PartialImage, Progress, Retrieved
from engine.sampling import Argmax, Multinomial, Sampler, Temperature, TokenSelector, modality_mask

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.jobs import Job


@dataclass
class Retrieval:
    """What to retrieve for a job: k documents for a text and/or image query."""

    k: int
    text: str | None = None
    image: np.ndarray | None = None  # uint8 (H, W, 3)


@dataclass
class Request:
    task: str
    output: str  # "image" | "text" | "seg"
    cond: np.ndarray  # prompt ids; the output starts right after them
    uncond: np.ndarray | None  # the classifier-free-guidance stream (image outputs), or None
    sampler: TokenSelector
    settings: dict
    n: int = 1
    retrieval: Retrieval | None = None
    rerank_text: str | None = None  # re-rank image candidates by their score against this text
    forced: np.ndarray | None = None  # image outputs: (H*W,) vocab id to force, -1 = sample (infill)
    composite: Callable[[np.ndarray], np.ndarray] | None = None  # model-size images -> final images
    max_text_tokens: int = 64


def run(engine: Engine, req: Request) -> Callable[[Job], Iterator[Event]]:
    """The body of a job for `req` (see engine/jobs.py)."""

    def body(job: Job) -> Iterator[Event]:
        t0 = time.perf_counter()
        reserve = req.max_text_tokens if req.output == "text" else engine.vocab.image_tokens_per_image
        cond, uncond, used = req.cond, req.uncond, 0
        if req.retrieval is not None and req.retrieval.k > 0:
            documents = engine.retrieve(req.retrieval.k, text=req.retrieval.text, image=req.retrieval.image)
            cond, uncond, kept = _prepend(engine, documents, req.cond, req.uncond, reserve)
            used = len(kept)
            yield Retrieved(job.id, tuple(doc for doc, _ in kept))
        settings = {**req.settings, "retrieved": used}
        if req.output == "image":
            candidates = yield from _image(engine, job, req, cond, uncond)
        elif req.output == "seg":
            candidates = yield from _seg(engine, job, req, cond)
        else:
            candidates = yield from _text(engine, job, req, cond)
        yield Finished(job.id, req.task, tuple(candidates), settings, time.perf_counter() - t0)

    return body


def _prepend(engine: Engine, documents, cond, uncond, reserve: int):
    """`<eos> R1 <eos> R2 ... prompt` (the prompt starts with its own <eos>), keeping the best
    documents that still leave `reserve` tokens of the context for the output."""
    room = engine.max_len - reserve - max(len(cond), 0 if uncond is None else len(uncond))
    kept, prefix = [], []
    for doc, ids in documents:
        if len(ids) + 1 > room:
            continue
        room -= len(ids) + 1
        kept.append((doc, ids))
        prefix += [[engine.vocab.eos], ids]
    if not kept:
        return cond, uncond, kept
    head = np.concatenate([np.asarray(p, np.int64) for p in prefix])
    return (np.concatenate([head, cond]), None if uncond is None else np.concatenate([head, uncond]), kept)


def _rate(done: int, since: float) -> float:
    return done / max(time.perf_counter() - since, 1e-9)


# -- image outputs ------------------------------------------------------------------------------------
def _image(engine: Engine, job: Job, req: Request, cond, uncond):
    vocab, tok = engine.vocab, engine.image_tokenizer
    h, w = vocab.image_grid
    t0 = time.perf_counter()
    if req.forced is None:
        steps = image_span(start(engine.backend, cond, uncond, req.n), vocab, req.sampler)
    else:
        steps = forced_image_span(engine, cond, uncond, req.n, req.sampler, req.forced)
    rows_shown, images = 0, None
    for step in steps:
        yield Progress(job.id, step.done, step.total, _rate(step.done, t0))
        rows = step.done // w
        if rows > rows_shown:
            codes = vocab.to_codes(step.tokens[:, : rows * w])
            if rows == h:
                images = tok.decode(codes.reshape(req.n, h, w))
                preview = images
            else:
                preview = tok.decode_partial(codes)
            if req.composite is not None:
                preview = req.composite(preview)
            for i in range(req.n):
                yield PartialImage(job.id, i, rows, h, preview[i])
            rows_shown = rows
    assert images is not None
    final = req.composite(images) if req.composite is not None else images
    scores = _scores(engine, req.rerank_text, final)
    order = np.argsort(-scores, kind="stable") if scores is not None else np.arange(req.n)
    return [Candidate(image=final[i], score=None if scores is None else float(scores[i])) for i in order]


def _scores(engine: Engine, text: str | None, images: np.ndarray) -> np.ndarray | None:
    if text is None or engine.retriever is None:
        return None
    from engine.retriever import text_image_score

    return text_image_score(engine.retriever, text, images)


def forced_image_span(
    engine: Engine, cond, uncond, n: int, sampler: TokenSelector, forced: np.ndarray
) -> Iterator[Step]:
    """An image span where the known cells are fixed (forced >= 0) and only the others are sampled.

    The known cells before the first masked one go into the prompt (one prefill instead of a step
    each), and the cells after the last masked one need no decoding at all.
    """
    vocab = engine.vocab
    forced = np.asarray(forced, np.int64)
    total = len(forced)
    free = np.flatnonzero(forced < 0)
    first, last = int(free[0]), int(free[-1])
    out = np.broadcast_to(np.where(forced < 0, 0, forced), (n, total)).copy()
    known = forced[:first]
    stream: Stream = start(
        engine.backend,
        np.concatenate([cond, known]),
        None if uncond is None else np.concatenate([uncond, known]),
        n,
    )
    mask = modality_mask(vocab, "image")
    for i in range(first, last + 1):
        if forced[i] >= 0:
            tokens = np.full(n, forced[i], np.int64)
        else:
            tokens = np.asarray(sampler(mask(stream.logits)), np.int64)
        out[:, i] = tokens
        if i < last:
            stream.feed(tokens)
        done = total if i == last else i + 1
        yield Step(done, total, out[:, :done], np.full(n, done == total))


# -- segmentation and text outputs ------------------------------------------------------------------
def _seg(engine: Engine, job: Job, req: Request, cond):
    vocab = engine.vocab
    t0 = time.perf_counter()
    last: Step | None = None
    for step in seg_span(start(engine.backend, cond, None, 1), vocab, req.sampler):
        yield Progress(job.id, step.done, step.total, _rate(step.done, t0))
        last = step
    assert last is not None
    grid = vocab.to_classes(last.tokens[0]).reshape(vocab.image_grid)
    return [Candidate(segmentation=grid)]


def _text(engine: Engine, job: Job, req: Request, cond):
    vocab = engine.vocab
    t0 = time.perf_counter()
    stream = start(engine.backend, cond, None, req.n)
    last: Step | None = None
    for step in text_span(stream, vocab, req.sampler, req.max_text_tokens):
        yield Progress(job.id, step.done, step.total, _rate(step.done, t0))
        last = step
    assert last is not None
    decode = engine.text_tokenizer.decode
    return [Candidate(text=decode(vocab.to_bpe(ids)).strip()) for ids in text_results(last.tokens, vocab)]


# -- input checks (raise at job creation) -------------------------------------------------------------
def clean_text(text, what: str, allow_empty: bool = False) -> str:
    """Control characters (newlines, tabs, escapes, NUL) become spaces, whitespace runs one space."""
    if not isinstance(text, str):
        raise BadInputError(f"the {what} must be text, got {type(text).__name__}")
    cleaned = " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in text).split())
    if not cleaned and not allow_empty:
        raise BadInputError(f"the {what} is empty")
    return cleaned


def check_seed(seed) -> int:
    """None -> a fresh random seed (reported in the settings), else a non-negative integer."""
    if seed is None:
        return secrets.randbelow(2**31)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise BadInputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_count(value, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise BadInputError(f"{what} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


def text_sampler(temperature: float | None, seed: int | None) -> tuple[TokenSelector, dict]:
    """Greedy unless a temperature > 0 is given (then seeded sampling)."""
    if temperature is None or temperature == 0:
        return Argmax(), {"greedy": True}
    seed = check_seed(seed)
    try:
        sampler = Sampler([Temperature(temperature)], Multinomial(seed))
    except (ValueError, TypeError) as exc:
        raise BadInputError(str(exc)) from None
    return sampler, {"temperature": temperature, "seed": seed}


def to_rgb_array(image) -> np.ndarray:
    """A path, or uint8 (H, W), (H, W, 3), (H, W, 4) pixels -> uint8 (H, W, 3) RGB (alpha over white)."""
    from engine.imageio import load_image, to_rgb

    if isinstance(image, (str, Path)):
        return load_image(image, size=None)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise BadInputError(f"an image must be uint8 pixels, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    elif arr.ndim == 3 and arr.shape[-1] == 4:
        arr = np.asarray(to_rgb(Image.fromarray(arr, "RGBA")))
    if arr.ndim != 3 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise BadInputError(f"an image must be (H, W, 3) RGB, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Plain (stretching) resize: the whole picture is kept, so grid cells map onto the whole image."""
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BICUBIC))


def pixel_mask(mask, shape: tuple[int, int]) -> np.ndarray:
    """A mask (a path, or (H, W[, C]) pixels) -> float32 coverage (H, W) in [0, 1]; > 0 is regenerated.

    A file, a bool or a uint8 mask is hard (white / True / > 127 = 1); a float mask is coverage (the
    studio's feathered brush), by which the result is blended over the original (`compositor`)."""
    if isinstance(mask, (str, Path)):
        from engine.imageio import load_image

        mask = load_image(mask, size=None).max(axis=-1) > 127
    arr = np.asarray(mask)
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    if arr.ndim != 2:
        raise BadInputError(f"the mask must be a 2-D (H, W) array, got shape {arr.shape}")
    if arr.shape != tuple(shape):
        raise BadInputError(
            f"the mask is {arr.shape[1]}x{arr.shape[0]} pixels but the image is {shape[1]}x{shape[0]}; "
            "they must be the same size"
        )
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
            raise BadInputError("a float mask is coverage: every value must be in [0, 1]")
        alpha = arr.astype(np.float32)
    else:
        alpha = (arr > 127 if arr.dtype == np.uint8 else arr.astype(bool)).astype(np.float32)
    if not (alpha > 0).any():
        raise BadInputError("the mask is empty: mark the region to regenerate")
    return alpha


def mask_cells(region_px: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Pixel mask -> grid cells: a cell is regenerated when any of its pixels is masked."""
    h, w = region_px.shape
    rows = (np.arange(h) * grid[0]) // h
    cols = (np.arange(w) * grid[1]) // w
    counts = np.zeros(grid, np.int64)
    np.add.at(counts, (rows[:, None], cols[None, :]), region_px)
    return counts > 0


def compositor(original: np.ndarray, alpha: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Model-size images (N, S, S, 3) -> the original's size, blended over it by alpha (H, W) in [0, 1]
    (`pixel_mask`): a pixel with alpha 0 is the original's bit for bit, one with alpha 1 the model's.
    The one place inpainting is composited: the CLI, the studio and the demo engine get its result."""
    h, w = original.shape[:2]
    where = alpha > 0
    a = alpha[where][:, None].astype(np.float32)
    kept = original[where].astype(np.float32) * (1.0 - a)

    def composite(images: np.ndarray) -> np.ndarray:
        out = np.repeat(original[None], len(images), axis=0)
        for im, o in zip(images, out, strict=True):
            o[where] = np.clip(np.rint(kept + resize(im, h, w)[where].astype(np.float32) * a), 0, 255)
        return out

    return composite
