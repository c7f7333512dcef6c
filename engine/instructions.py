"""Instruction (SFT) task formats, CM3Leon §4 / App. E adapted to Tessera (docs/architecture.md).

Every document is `<eos> prompt output <eos>`; `prompt()` is exactly what the engine feeds and ends
where the model must start writing. P = one paraphrase of the task's instruction, I = H*W image ids,
S = H*W segmentation ids, T = text.

    t2i             <eos> P(caption) <break>                           -> I
    caption         <eos> P <break> I <break>                          -> T <eos>
    caption_infill  <eos> <mask:0> <break> I <infill> <mask:0>         -> T <eos>   (no instruction)
    vqa             <eos> P(question) <break> I <break> lead           -> T <eos>
    infill          <eos> P[(hint)] <break> I with holes <break>       -> I (all H*W cells)
    edit            <eos> P <break> I <break> instruction <break>      -> I'
    segment         <eos> P <break> I <break>                          -> S
    seg2img         <eos> P <break> S <break> [caption <break>]        -> I
    grounded        <eos> P(caption, boxes) <break>                    -> I

Infilling design. The prompt carries the whole grid with every masked cell replaced by one filler id,
`<mask:15>` (CM3 uses it only for a 16th span, which Poisson(1) practically never draws, and its own
loss weight is 0), and the model writes the FULL grid again. The alternative, CM3 spans over the
region, cuts a k-row rectangle into k raster runs (k sentinels, up to 8 of the 16) and makes the
output a list of loose fragments instead of an image. With the full grid the model has seen every
known cell, left and right of the hole, before it writes; the output is an ordinary image span (the
same "exactly H*W image ids" decoding, row previews and re-ranking as text->image); and the engine
forces the known cells while decoding (`infill_forced_ids`), so only masked cells are sampled. The
price is H*W decoding steps instead of one per masked cell. Because a VQ decoder spreads a changed
code into neighbouring pixels, the engine finally composites in pixel space (original pixels
outside the masked cells), so every pixel outside the mask is unchanged by construction.

Some paraphrases are held out: never used for training, used by evaluation for unseen wording.
They are new sentences made of words the training text does use, so a held-out prompt tokenizes
into tokens the model has trained (the text tokenizer never sees the held-out sentences).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from engine.errors import BadInputError
from engine.formats import caption_prompt
from engine.text_tokenizer import TextTokenizer
from engine.vocab import HOLE_MASK, Vocab


class Task(str, Enum):
    T2I = "t2i"
    CAPTION = "caption"
    CAPTION_INFILL = "caption_infill"
    VQA = "vqa"
    INFILL = "infill"
    EDIT = "edit"
    SEGMENT = "segment"
    SEG2IMG = "seg2img"
    GROUNDED = "grounded"


@dataclass(frozen=True)
class Paraphrase:
    text: str  # placeholders: {text} (caption / question / hint), {boxes}
    heldout: bool = False
    lead: str = ""  # vqa: text after the image, right before the answer
    bare: str = ""  # infill: the wording used when no hint is given


P = Paraphrase
PARAPHRASES: dict[Task, tuple[Paraphrase, ...]] = {
    Task.T2I: (
        P("{text}"),  # the pretraining prompt itself
        P("Generate an image: {text}"),
        P("Draw this: {text}"),
        P("Create a picture of the following: {text}"),
        P("Make this image: {text}", heldout=True),
    ),
    Task.CAPTION: (
        P("Describe the image"),
        P("Write a caption for this picture"),
        P("What does this image show?"),
        P("Describe this picture", heldout=True),
    ),
    Task.CAPTION_INFILL: (P(""),),  # captioning by infilling has no instruction words
    Task.VQA: (
        P("Question: {text}", lead="Answer:"),
        P("Answer the question about the image. {text}"),
        P("{text}", lead="The answer is"),
        P("Answer this question: {text}", lead="The answer is", heldout=True),
    ),
    Task.INFILL: (
        P("Fill in the masked region with {text}", bare="Fill in the masked region"),
        P("Complete the missing part of the image: {text}", bare="Complete the missing part of the image"),
        P("Inpaint the hidden cells so that they show {text}", bare="Inpaint the hidden cells"),
        P("Draw the missing cells of the image: {text}", bare="Draw the missing cells of the image",
          heldout=True),
    ),
    Task.EDIT: (
        P("Edit the image following the instruction"),
        P("Change the picture as the instruction says"),
        P("Apply the edit described below to the image"),
        P("Edit this picture as described below", heldout=True),
    ),
    Task.SEGMENT: (
        P("Segment the image"),
        P("Give the segmentation map of the picture"),
        P("Label every cell of the image with its object class"),
        P("Make the segmentation map of this image", heldout=True),
    ),
    Task.SEG2IMG: (
        P("Make an image from the segmentation map"),
        P("Draw a picture that follows this segmentation map"),
        P("Generate an image with this layout of regions"),
        P("Create a picture from this segmentation map", heldout=True),
    ),
    Task.GROUNDED: (
        P("Generate an image of {text} with {boxes}"),
        P("Draw {text}, with {boxes}"),
        P("Create a picture of {text} with {boxes}"),
        P("Make an image of {text} with {boxes}", heldout=True),
    ),
}
del P

def as_task(task: Task | str) -> Task:
    try:
        return Task(task)
    except ValueError:
        names = ", ".join(t.value for t in Task)
        raise BadInputError(f"unknown task {task!r}; expected one of {names}") from None


OUTPUT: dict[Task, str] = {
    Task.T2I: "image", Task.CAPTION: "text", Task.CAPTION_INFILL: "text", Task.VQA: "text",
    Task.INFILL: "image", Task.EDIT: "image", Task.SEGMENT: "seg", Task.SEG2IMG: "image",
    Task.GROUNDED: "image",
}


def output_spec(task: Task | str) -> str:
    """What the model writes after the prompt: "image" (exactly H*W image ids), "seg" (exactly H*W
    segmentation ids) or "text" (text ids until <eos>). Every output is followed by <eos>."""
    return OUTPUT[as_task(task)]


def train_paraphrases(task: Task | str) -> list[int]:
    return [i for i, p in enumerate(PARAPHRASES[as_task(task)]) if not p.heldout]


def heldout_paraphrases(task: Task | str) -> list[int]:
    return [i for i, p in enumerate(PARAPHRASES[as_task(task)]) if p.heldout]


Box = tuple[str, tuple[int, int, int, int]]  # (label, (x0, y0, x1, y1)) on the 0-255 grid


def box_text(boxes: Sequence[Box]) -> str:
    """'circle at (12, 40) -> (80, 110) and square at (...) -> (...)' (CM3Leon's grounding text)."""
    if not boxes:
        raise BadInputError("grounded generation needs at least one box")
    parts = []
    for label, box in boxes:
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 <= x1 <= 255 and 0 <= y0 <= y1 <= 255):
            raise BadInputError(f"box {tuple(box)} for {label!r}: need 0 <= x0 <= x1 <= 255 and y likewise")
        parts.append(f"{label} at ({x0}, {y0}) -> ({x1}, {y1})")
    return " and ".join(parts)


# -- layout --------------------------------------------------------------------------------------
def _grid(vocab: Vocab, ids, is_kind, what: str) -> np.ndarray:
    if ids is None:
        raise BadInputError(f"this task needs {what}")
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if arr.size != vocab.image_tokens_per_image or not np.all(is_kind(arr)):
        raise BadInputError(f"{what} must be exactly {vocab.image_tokens_per_image} {what} token ids")
    return arr


def region_cells(vocab: Vocab, region) -> np.ndarray:
    """A masked region as a flat bool array over the grid cells (raster order)."""
    if region is None:
        raise BadInputError("infilling needs a region: a bool (H, W) array of masked grid cells")
    arr = np.asarray(region, dtype=bool)
    if arr.shape != tuple(vocab.image_grid) or not arr.any():
        raise BadInputError(f"region must be a non-empty bool array of shape {tuple(vocab.image_grid)}")
    return arr.reshape(-1)


def rectangle(vocab: Vocab, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    """Bool (H, W) region of the cells r0..r1 x c0..c1 (inclusive)."""
    h, w = vocab.image_grid
    if not (0 <= r0 <= r1 < h and 0 <= c0 <= c1 < w):
        raise BadInputError(f"rectangle rows {r0}..{r1}, cols {c0}..{c1} is not inside the {h}x{w} grid")
    region = np.zeros(vocab.image_grid, dtype=bool)
    region[r0 : r1 + 1, c0 : c1 + 1] = True
    return region


def infill_forced_ids(vocab: Vocab, image_ids, region) -> np.ndarray:
    """For decoding an infill output: the original id where the cell is known, -1 where it is masked."""
    image = _grid(vocab, image_ids, vocab.is_image, "image")
    return np.where(region_cells(vocab, region), -1, image)


class _Slot(Enum):
    """Non-text pieces of a prompt layout, filled in by `prompt`."""

    EOS = "eos"
    BRK = "brk"
    IMAGE = "image"
    HOLED = "holed"  # the image with masked cells replaced by <mask:15>
    SEG = "seg"
    CAPTION_INFILL = "caption_infill"  # formats.caption_prompt


def _layout(task: Task, *, text: str | None, boxes: Sequence[Box] | None, paraphrase: int) -> list:
    """The prompt as pieces: strings (tokenized as text) and slots."""
    para = PARAPHRASES[task]
    if not 0 <= paraphrase < len(para):
        raise BadInputError(f"task {task.value} has paraphrases 0..{len(para) - 1}, got {paraphrase}")
    p = para[paraphrase]
    required = task in (Task.T2I, Task.VQA, Task.EDIT, Task.GROUNDED)
    if text is not None and not (isinstance(text, str) and text.strip()):
        raise BadInputError(f"task {task.value}: text must be a non-empty string")
    if required and text is None:
        raise BadInputError(f"task {task.value} needs text")
    eos, brk, image = _Slot.EOS, _Slot.BRK, _Slot.IMAGE

    if task is Task.T2I:
        return [eos, p.text.format(text=text), brk]
    if task in (Task.CAPTION, Task.SEGMENT):
        return [eos, p.text, brk, image, brk]
    if task is Task.CAPTION_INFILL:
        return [_Slot.CAPTION_INFILL]
    if task is Task.VQA:
        return [eos, p.text.format(text=text), brk, image, brk] + ([p.lead] if p.lead else [])
    if task is Task.INFILL:
        return [eos, p.bare if text is None else p.text.format(text=text), brk, _Slot.HOLED, brk]
    if task is Task.EDIT:
        return [eos, p.text, brk, image, brk, text, brk]
    if task is Task.SEG2IMG:
        return [eos, p.text, brk, _Slot.SEG, brk] + ([text, brk] if text is not None else [])
    if task is Task.GROUNDED:
        return [eos, p.text.format(text=text, boxes=box_text(boxes or [])), brk]
    raise BadInputError(f"unknown task {task!r}")


def prompt(
    task: Task | str, vocab: Vocab, text_tok: TextTokenizer, *, image_ids=None, text: str | None = None,
    seg_ids=None, boxes: Sequence[Box] | None = None, region=None, paraphrase: int = 0,
) -> np.ndarray:
    """The ids the engine feeds; the model's output starts right after them (see module doc).

    text is the caption (t2i, seg2img [optional], grounded), the question (vqa), the hint (infill,
    optional) or the edit instruction (edit). image_ids / seg_ids: H*W vocab ids (flat or (H, W)).
    boxes: [(label, (x0, y0, x1, y1))] on the 0-255 grid. region: bool (H, W) masked cells (infill)."""
    out: list[np.ndarray | list[int]] = []
    for piece in _layout(as_task(task), text=text, boxes=boxes, paraphrase=paraphrase):
        if isinstance(piece, str):
            out.append(vocab.text_ids(text_tok.encode(piece)))
        elif piece is _Slot.EOS:
            out.append([vocab.eos])
        elif piece is _Slot.BRK:
            out.append([vocab.brk])
        elif piece is _Slot.IMAGE:
            out.append(_grid(vocab, image_ids, vocab.is_image, "image"))
        elif piece is _Slot.HOLED:
            image = _grid(vocab, image_ids, vocab.is_image, "image")
            out.append(np.where(region_cells(vocab, region), vocab.mask(HOLE_MASK), image))
        elif piece is _Slot.SEG:
            out.append(_grid(vocab, seg_ids, vocab.is_seg, "segmentation"))
        else:
            out.append(caption_prompt(vocab, _grid(vocab, image_ids, vocab.is_image, "image")))
    return np.concatenate([np.asarray(o, dtype=np.int64) for o in out])


def prompt_texts(task: Task | str, *, text: str | None = None, boxes: Sequence[Box] | None = None,
                 paraphrase: int = 0) -> list[str]:
    """The text pieces a prompt tokenizes (the text tokenizer's training corpus is built from them)."""
    pieces = _layout(as_task(task), text=text, boxes=boxes, paraphrase=paraphrase)
    return [p for p in pieces if isinstance(p, str)]


def document(
    task: Task | str, vocab: Vocab, text_tok: TextTokenizer, *, output, image_ids=None,
    text: str | None = None, seg_ids=None, boxes: Sequence[Box] | None = None, region=None,
    paraphrase: int = 0,
) -> np.ndarray:
    """prompt + output + <eos>: a training document. output is a str for text tasks and H*W
    image or segmentation vocab ids for grid tasks (for infill: the complete original grid)."""
    task = as_task(task)
    head = prompt(task, vocab, text_tok, image_ids=image_ids, text=text, seg_ids=seg_ids, boxes=boxes,
                  region=region, paraphrase=paraphrase)
    kind = OUTPUT[task]
    if kind == "text":
        if not (isinstance(output, str) and output):
            raise BadInputError(f"task {task.value} needs a non-empty text output")
        out = vocab.text_ids(text_tok.encode(output))
    elif kind == "image":
        out = _grid(vocab, output, vocab.is_image, "image")
    else:
        out = _grid(vocab, output, vocab.is_seg, "segmentation")
    return np.concatenate([head, out, [vocab.eos]]).astype(np.int64)
