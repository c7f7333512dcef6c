"""Instruction (SFT) documents from Shapes World, one per (task, index), deterministic by seed.

Images become codes through an `encode(images uint8 (N, H, W, 3)) -> codes (N, h, w)` callable
(`ImageTokenizer.load(dir).encode` in practice; tests pass a fake). The formats are in
engine/instructions.py; this module only decides the content: which caption, which question,
which region, which paraphrase.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from engine.errors import BadInputError
from engine.formats import apply_spans
from engine.instructions import (
    OUTPUT,
    PARAPHRASES,
    Task,
    document,
    heldout_paraphrases,
    prompt,
    rectangle,
    train_paraphrases,
)
from engine.text_tokenizer import TextTokenizer
from engine.vocab import Vocab
from training.data.folder import FolderDataset
from training.data.shapes import KINDS, POSITIONS, Scene, ShapesWorld, seg_grid
from training.data.shapes_text import NUMBER_WORDS, canonical_position

Encoder = Callable[[np.ndarray], np.ndarray]


# -- visual questions with exact answers ------------------------------------------------------------
def plural(kind: str) -> str:
    return kind + ("es" if kind.endswith(("s", "x", "ch", "sh")) else "s")


def vqa_questions(scene: Scene) -> list[tuple[str, str, str]]:
    """Every question this module asks about a scene, as (question, answer, type). Answers are
    single canonical words or position labels, so evaluation is an exact string match. Questions
    about one object name it uniquely (unique kind, or unique colour + kind)."""
    objs = scene.objects
    out = [("how many shapes are there?", NUMBER_WORDS[len(objs)], "count")]
    for kind in KINDS:
        out.append((f"how many {plural(kind)} are there?", NUMBER_WORDS[sum(o.kind == kind for o in objs)],
                    "count"))
    kind_count = {k: sum(o.kind == k for o in objs) for k in KINDS}
    pair_count = {(o.color, o.kind): sum((p.color, p.kind) == (o.color, o.kind) for p in objs) for o in objs}
    for o in objs:
        if kind_count[o.kind] == 1:
            out.append((f"what colour is the {o.kind}?", o.color, "colour"))
        where = canonical_position(o.row, o.col)
        out.append((f"what shape is {where}?", o.kind, "kind"))
        out.append((f"what colour is the shape {where}?", o.color, "colour"))
        if pair_count[(o.color, o.kind)] == 1:
            out.append((f"where is the {o.color} {o.kind}?", POSITIONS[o.row][o.col], "position"))
            out.append((f"how big is the {o.color} {o.kind}?", o.size, "size"))
    return out


def vqa_question(scene: Scene, rng: np.random.Generator) -> tuple[str, str, str]:
    """One question: a question type uniformly, then a question of that type uniformly (so the
    many count questions do not swamp the others)."""
    qs = vqa_questions(scene)
    types = sorted({t for _, _, t in qs})
    t = types[int(rng.integers(len(types)))]
    of_type = [q for q in qs if q[2] == t]
    return of_type[int(rng.integers(len(of_type)))]


def grounded_caption(scene: Scene) -> str:
    """Objects in draw order, without positions: the boxes carry the layout."""
    return " and ".join(f"a {o.size} {o.color} {o.kind}" for o in scene.objects)


def grounded_boxes(scene: Scene, boxes256) -> list[tuple[str, tuple[int, int, int, int]]]:
    pairs = zip(scene.objects, boxes256, strict=True)
    return [(f"{o.color} {o.kind}", tuple(int(v) for v in b)) for o, b in pairs]


def box_region(vocab: Vocab, box256) -> np.ndarray:
    """The grid cells a 0-255 box touches."""
    h, w = vocab.image_grid
    x0, y0, x1, y1 = box256
    return rectangle(vocab, y0 * h // 256, x0 * w // 256, y1 * h // 256, x1 * w // 256)


# -- documents -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    task: Task
    ids: np.ndarray  # <eos> prompt output <eos>
    prompt_len: int  # ids[:prompt_len] is what the engine feeds; the output starts there
    paraphrase: int
    dropped: bool  # the condition text was cut out as CM3 span <mask:0> (guidance training)
    maskable: bool  # no sentinel inside yet (infill holes, a dropped condition), so CM3 may apply


# Tasks whose text condition is cut out with probability `cond_dropout`; index of the <break> that
# ends the condition (0 = the first one). The engine's classifier-free-guidance streams are exactly
# the prompts of such documents: `<eos> <mask:0> <break>` (t2i, grounded), `... I <break> <mask:0>
# <break>` (edit), `... S <break> <mask:0> <break>` (seg2img).
CONDITION_END: dict[Task, int] = {Task.T2I: 0, Task.GROUNDED: 0, Task.EDIT: 2, Task.SEG2IMG: 2}


def _stream(name: str) -> int:
    return zlib.crc32(name.encode())


def drop_condition(vocab: Vocab, task: Task, ids: np.ndarray, prompt_len: int) -> tuple[np.ndarray, int]:
    """The CM3 form of a document whose condition text is the single span <mask:0>:
    `<eos> ... <mask:0> ... output <infill> <mask:0> condition <eos>`, and its new prompt length."""
    breaks = np.flatnonzero(ids == vocab.brk)
    end = int(breaks[CONDITION_END[task]])
    start = int(breaks[CONDITION_END[task] - 1]) + 1 if CONDITION_END[task] else 1
    body = apply_spans(vocab, ids[1:-1], [(start - 1, end - 1)])
    return np.concatenate([[vocab.eos], body, [vocab.eos]]), prompt_len - (end - start) + 1


class InstructionSource(ABC):
    """What every instruction dataset shares: example(task, index) -> Example, a pure function of
    (seed, task, index). Subclasses give `tasks`, `__len__`, `_rng` and `_content`.

    paraphrases: "train" (never the held-out ones), "heldout" (only those) or "all".
    cond_dropout: probability that a t2i / grounded / edit / seg2img example has its condition text
    cut out as <mask:0> (so classifier-free guidance has a trained unconditional stream)."""

    tasks: tuple[Task, ...] = ()

    def __init__(self, vocab: Vocab, text_tok: TextTokenizer, encode: Encoder, *, seed: int = 0,
                 paraphrases: str = "train", cond_dropout: float = 0.1) -> None:
        if paraphrases not in ("train", "heldout", "all"):
            raise BadInputError(f"paraphrases must be train, heldout or all, not {paraphrases!r}")
        if not 0.0 <= cond_dropout <= 1.0:
            raise BadInputError(f"cond_dropout must be in [0, 1], not {cond_dropout}")
        self.vocab, self.text_tok, self.encode = vocab, text_tok, encode
        self.seed, self.paraphrases, self.cond_dropout = seed, paraphrases, cond_dropout

    @abstractmethod
    def __len__(self) -> int:
        ...

    @abstractmethod
    def _rng(self, task: Task, index: int) -> np.random.Generator:
        ...

    @abstractmethod
    def _content(self, task: Task, index: int, rng: np.random.Generator) -> tuple[dict, object]:
        """(prompt arguments, output) of one example."""

    def _codes(self, *images: np.ndarray) -> list[np.ndarray]:
        codes = np.asarray(self.encode(np.stack(images)))
        if codes.shape != (len(images), *self.vocab.image_grid):
            expected = (len(images), *self.vocab.image_grid)
            raise BadInputError(f"encoder returned codes of shape {codes.shape}, expected {expected}")
        return [self.vocab.image_ids(c.reshape(-1)) for c in codes]

    def _paraphrase(self, task: Task, rng: np.random.Generator) -> int:
        if self.paraphrases == "train":
            choices = train_paraphrases(task)
        elif self.paraphrases == "heldout":
            choices = heldout_paraphrases(task) or train_paraphrases(task)  # caption_infill has one form
        else:
            choices = list(range(len(PARAPHRASES[task])))
        return choices[int(rng.integers(len(choices)))]

    def example(self, task: Task | str, index: int) -> Example:
        task = Task(task)
        if task not in self.tasks:
            have = ", ".join(t.value for t in self.tasks)
            raise BadInputError(f"this dataset has no {task.value} examples (it has {have})")
        rng = self._rng(task, index)
        p = self._paraphrase(task, rng)
        args, output = self._content(task, index, rng)
        ids = document(task, self.vocab, self.text_tok, output=output, paraphrase=p, **args)
        n = prompt(task, self.vocab, self.text_tok, paraphrase=p, **args).size
        drop = task in CONDITION_END and args.get("text") is not None and rng.random() < self.cond_dropout
        if drop:
            ids, n = drop_condition(self.vocab, task, ids, n)
        return Example(task, ids, n, p, drop, maskable=not np.any(self.vocab.is_mask(ids)))


class InstructionData(InstructionSource):
    """SFT examples for every task from one Shapes World split (see InstructionSource)."""

    tasks = tuple(OUTPUT)

    def __init__(self, vocab: Vocab, text_tok: TextTokenizer, encode: Encoder, *, split: str = "train",
                 seed: int = 0, paraphrases: str = "train", cond_dropout: float = 0.1,
                 world: ShapesWorld | None = None) -> None:
        super().__init__(vocab, text_tok, encode, seed=seed, paraphrases=paraphrases,
                         cond_dropout=cond_dropout)
        self.world = world or ShapesWorld(split, seed=seed)

    def __len__(self) -> int:
        return len(self.world)

    def _rng(self, task: Task, index: int) -> np.random.Generator:
        return self.world.rng(index, stream=_stream(task.value))

    def _content(self, task: Task, index: int, rng: np.random.Generator) -> tuple[dict, object]:
        """(prompt arguments, output) of one example."""
        vocab = self.vocab
        if task is Task.EDIT:
            pair = self.world.edit_sample(index)
            before, after = self._codes(pair.before.image, pair.after.image)
            return {"image_ids": before, "text": pair.instruction}, after
        s = self.world.sample(index)
        (image,) = self._codes(s.image)
        if task is Task.T2I:
            return {"text": s.caption}, image
        if task in (Task.CAPTION, Task.CAPTION_INFILL):
            return {"image_ids": image}, s.canonical
        if task is Task.VQA:
            q, a, _ = vqa_question(s.scene, rng)
            return {"image_ids": image, "text": q}, a
        if task is Task.INFILL:
            return self._infill(s, image, rng), image
        seg = vocab.seg_ids(seg_grid(s.scene, grid=vocab.image_grid[0]).reshape(-1))
        if task is Task.SEGMENT:
            return {"image_ids": image}, seg
        if task is Task.SEG2IMG:
            return {"seg_ids": seg, "text": s.caption if rng.random() < 0.8 else None}, image
        if task is Task.GROUNDED:
            return {"text": grounded_caption(s.scene), "boxes": grounded_boxes(s.scene, s.boxes)}, image
        raise BadInputError(f"unknown task {task!r}")

    def _infill(self, s, image: np.ndarray, rng: np.random.Generator) -> dict:
        """Half the time the cells under one object (hint: that object), half a random rectangle
        (hint: the whole caption); each hint is given with probability 1/2."""
        h, w = self.vocab.image_grid
        if rng.random() < 0.5:
            k = int(rng.integers(len(s.scene.objects)))
            o = s.scene.objects[k]
            region, hint = box_region(self.vocab, s.boxes[k]), f"a {o.size} {o.color} {o.kind}"
        else:
            region, hint = random_rectangle(self.vocab, rng), s.canonical
        return {"image_ids": image, "region": region, "text": hint if rng.random() < 0.5 else None}


def random_rectangle(vocab: Vocab, rng: np.random.Generator):
    """A hole of 1..half the grid in each direction, anywhere in the image."""
    h, w = vocab.image_grid
    rh, rw = (int(v) for v in rng.integers(1, [h // 2 + 1, w // 2 + 1]))
    r0, c0 = int(rng.integers(h - rh + 1)), int(rng.integers(w - rw + 1))
    return rectangle(vocab, r0, c0, r0 + rh - 1, c0 + rw - 1)


class FolderInstructionData(InstructionSource):
    """Caption-based examples (t2i, caption, caption_infill, infill: a random rectangle, the caption
    as its hint half the time) from a folder dataset's captioned images; uncaptioned images are left
    out. Deterministic by (seed, task, index)."""

    tasks = (Task.T2I, Task.CAPTION, Task.CAPTION_INFILL, Task.INFILL)

    def __init__(self, dataset: FolderDataset, vocab: Vocab, text_tok: TextTokenizer, encode: Encoder, *,
                 seed: int = 0, paraphrases: str = "train", cond_dropout: float = 0.1) -> None:
        super().__init__(vocab, text_tok, encode, seed=seed, paraphrases=paraphrases,
                         cond_dropout=cond_dropout)
        self.dataset = dataset
        self.captioned = [i for i, (_, text) in enumerate(dataset.items) if text.strip()]
        if not self.captioned:
            raise BadInputError(f"no captioned images in {dataset.root}")

    def __len__(self) -> int:
        return len(self.captioned)

    def _rng(self, task: Task, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, _stream(task.value), index]))

    def _content(self, task: Task, index: int, rng: np.random.Generator) -> tuple[dict, object]:
        pixels, text = self.dataset.load(self.captioned[index % len(self.captioned)])
        (image,) = self._codes(pixels)
        if task is Task.INFILL:
            hint = text if rng.random() < 0.5 else None
            return {"image_ids": image, "region": random_rectangle(self.vocab, rng), "text": hint}, image
        return ({"text": text}, image) if task is Task.T2I else ({"image_ids": image}, text)


class InstructionMixture:
    """Examples drawn from a task mixture: example(index) picks the task from `weights` with a
    generator seeded by (seed, index), so the stream is a pure function of the index.
    training/data/sft_source.py packs its examples into training rows."""

    def __init__(self, data: InstructionSource, weights: Mapping[Task | str, float], *,
                 seed: int = 0) -> None:
        tasks = [Task(t) for t in weights]
        w = np.asarray([float(weights[t]) for t in weights], dtype=np.float64)
        if not tasks or np.any(w < 0) or w.sum() <= 0:
            raise BadInputError("mixture weights must be non-negative with a positive sum")
        missing = [t.value for t, wt in zip(tasks, w, strict=True) if wt > 0 and t not in data.tasks]
        if missing:
            raise BadInputError(f"the data has no examples for: {', '.join(missing)}")
        self.data, self.tasks, self.p = data, tasks, w / w.sum()
        self.seed = seed

    def task(self, index: int) -> Task:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _stream("mixture"), index]))
        return self.tasks[int(rng.choice(len(self.tasks), p=self.p))]

    def example(self, index: int) -> Example:
        return self.data.example(self.task(index), index)
