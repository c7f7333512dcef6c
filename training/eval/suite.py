"""The evaluation suite: every capability of a bundle scored exactly on Shapes World.

Each metric is a plain function of a task callable (prompt -> image, image -> caption, ...) and
ground-truth samples, so it can be checked with fake models; `EngineTasks` turns an `Engine` into
those callables. Images from the model are read back by the judge (training/eval/judge.py).

    compositional_acc          GenEval-style: exactly the objects asked for, each with the right kind,
                               colour and cell (size reported apart as compositional_size_acc;
                               compositional_object_recall: the share of asked objects found)
    heldout_compositional_acc  the same on the heldout split (unseen colour-shape pairs)
    caption_exact              caption == canonical caption (case, whitespace, final period ignored)
    vqa_acc                    exact answers to the instruction-data questions
    seg_miou                   model's segmentation grid vs seg_grid, mean IoU over classes present
    infill_acc                 cells under one object masked, hint "a <size> <colour> <kind>": the judge
                               sees the original scene again (kind, colour, cell of every object)
    infill_outside_unchanged   every pixel outside the mask bit-identical to the input
    edit_success               the judge sees make_edit's 'after' scene (kind, colour, size, cell)
    grounding_iou              generation from boxes: IoU of the judge's box of each object vs the box asked
    fid, fid_floor             judge-feature FID of generated (test prompts) vs real val images, and of
                               the real test images of those prompts vs the same val images (the floor)

details.tokenizer_ceiling_*: the same compositional check and FID on the bundle's own VQ round trip
of the real test images, the most a transformer writing in those codes can score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import TesseraError, UnsupportedTaskError
from engine.settings import DEFAULTS
from training.data.instruction_data import grounded_boxes, grounded_caption, vqa_question
from training.data.shapes import SEG_CLASSES, Scene, ShapesWorld, seg_grid
from training.eval.fid import fid
from training.eval.judge import Judge, Predictions, box_iou

METRICS: tuple[str, ...] = (
    "compositional_acc",
    "heldout_compositional_acc",
    "caption_exact",
    "vqa_acc",
    "seg_miou",
    "infill_acc",
    "infill_outside_unchanged",
    "edit_success",
    "grounding_iou",
    "fid",
    "fid_floor",
)
SUITES: dict[str, int] = {"quick": 50, "full": 1000}  # items per metric
MAX_COMPOSITIONAL_OBJECTS = 2

Generate = Callable[[str, int], np.ndarray]  # (prompt, item seed) -> uint8 (H, W, 3)


# ---- scene comparison ------------------------------------------------------------------------------
def _cells(objects, with_size: bool) -> dict[tuple[int, int], tuple[str, ...]]:
    return {(o.row, o.col): (o.kind, o.color, o.size) if with_size else (o.kind, o.color) for o in objects}


def scene_matches(seen: Sequence, scene: Scene, with_size: bool = False) -> bool:
    """Exactly the scene's objects (count), each with its kind, colour (and size) in its cell."""
    return len(seen) == len(scene.objects) and _cells(seen, with_size) == _cells(scene.objects, with_size)


def objects_found(seen: Sequence, scene: Scene) -> int:
    """How many of the scene's objects are seen in their cell with their kind and colour: partial
    credit where scene_matches is all or nothing, so designs compare before either can compose."""
    found = _cells(seen, False)
    return sum(found.get(cell) == want for cell, want in _cells(scene.objects, False).items())


def sizes_match(seen: Sequence, scene: Scene) -> bool:
    """Every object of the scene found in its cell at its size (kind and colour aside)."""
    found = {(o.row, o.col): o.size for o in seen}
    return all(found.get((o.row, o.col)) == o.size for o in scene.objects)


def normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(". ")


# ---- ground truth ---------------------------------------------------------------------------------
def compositional_scenes(split: str, n: int, size: int, seed: int = 0) -> list:
    """The first n samples of a split with at most two objects."""
    world = ShapesWorld(split, seed=seed, size=size)
    out = []
    for i in range(len(world)):
        if len(out) == n:
            break
        if len(world.scene(i).objects) <= MAX_COMPOSITIONAL_OBJECTS:
            out.append(world.sample(i))
    return out


def cell_mask(box256: Sequence[int], grid: tuple[int, int], size: int) -> np.ndarray:
    """Pixel mask (size, size) of the token-grid cells a 0-255 box touches (whole cells, as the
    model regenerates whole cells)."""
    h, w = grid
    x0, y0, x1, y1 = box256
    r0, c0, r1, c1 = y0 * h // 256, x0 * w // 256, y1 * h // 256, x1 * w // 256
    rows, cols = (np.arange(size) * h) // size, (np.arange(size) * w) // size
    return ((rows >= r0) & (rows <= r1))[:, None] & ((cols >= c0) & (cols <= c1))[None, :]


# ---- metrics -------------------------------------------------------------------------------------
def compositional(generate: Generate, judge: Judge, samples: Sequence, seed: int = 0) -> dict:
    """Generate from each sample's canonical caption; judge the images."""
    images = np.stack([generate(s.canonical, seed + i) for i, s in enumerate(samples)])
    pred = judge.predict(images)
    ok = [scene_matches(pred.objects(i), s.scene) for i, s in enumerate(samples)]
    size_ok = [sizes_match(pred.objects(i), s.scene) for i, s in enumerate(samples)]
    found = sum(objects_found(pred.objects(i), s.scene) for i, s in enumerate(samples))
    recall = found / max(1, sum(len(s.scene.objects) for s in samples))
    return {"acc": float(np.mean(ok)), "size_acc": float(np.mean(size_ok)), "object_recall": recall,
            "pred": pred}


def caption_exact(caption: Callable[[np.ndarray], str], samples: Sequence) -> float:
    return float(np.mean([normalise(caption(s.image)) == normalise(s.canonical) for s in samples]))


def vqa(answer: Callable[[np.ndarray, str], str], samples: Sequence, seed: int = 0) -> dict:
    """One question per sample (instruction_data.vqa_question: a uniform question type); accuracy
    overall and per question type."""
    per_type: dict[str, list[bool]] = {}
    for i, s in enumerate(samples):
        q, a, kind = vqa_question(s.scene, np.random.default_rng([seed, i]))
        per_type.setdefault(kind, []).append(normalise(answer(s.image, q)) == normalise(a))
    every = [x for v in per_type.values() for x in v]
    return {
        "acc": float(np.mean(every)),
        "by_type": {k: float(np.mean(v)) for k, v in sorted(per_type.items())},
    }


def miou(pred: np.ndarray, truth: np.ndarray, n_classes: int = len(SEG_CLASSES)) -> float:
    """Mean IoU over the classes present (in truth or prediction) in the whole set. A predicted id
    outside 0..n_classes-1 is wrong for every class."""
    t = np.asarray(truth).reshape(-1).astype(np.int64)
    p = np.asarray(pred).reshape(-1).astype(np.int64)
    p = np.where((p >= 0) & (p < n_classes), p, n_classes)
    conf = np.bincount(t * (n_classes + 1) + p, minlength=n_classes * (n_classes + 1))
    conf = conf.reshape(n_classes, n_classes + 1)
    inter = np.diag(conf[:, :n_classes])
    union = conf.sum(1) + conf[:, :n_classes].sum(0) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def segmentation(segment: Callable[[np.ndarray], np.ndarray], samples: Sequence, grid: int) -> float:
    pred = np.stack([np.asarray(segment(s.image)) for s in samples])
    truth = np.stack([seg_grid(s.scene, grid=grid) for s in samples])
    if pred.shape != truth.shape:
        raise TesseraError(f"segmentation grids are {pred.shape[1:]}, expected {truth.shape[1:]}")
    return miou(pred, truth)


def infill(
    inpaint: Callable[[np.ndarray, np.ndarray, str], np.ndarray],
    judge: Judge,
    samples: Sequence,
    grid: tuple[int, int],
) -> dict:
    """Mask the token cells under one object (the i-th sample's object i mod count), hint it,
    judge the result against the original scene."""
    results, unchanged = [], []
    for i, s in enumerate(samples):
        k = i % len(s.scene.objects)
        o = s.scene.objects[k]
        mask = cell_mask(s.boxes[k], grid, s.image.shape[0])
        out = np.asarray(inpaint(s.image, mask, f"a {o.size} {o.color} {o.kind}"))
        results.append(out)
        unchanged.append(out.shape == s.image.shape and np.array_equal(out[~mask], s.image[~mask]))
    pred = judge.predict(np.stack(results))
    ok = [scene_matches(pred.objects(i), s.scene) for i, s in enumerate(samples)]
    return {"acc": float(np.mean(ok)), "outside_unchanged": float(np.mean(unchanged))}


def editing(edit: Callable[[np.ndarray, str], np.ndarray], judge: Judge, pairs: Sequence) -> dict:
    """pairs: ShapesWorld.edit_sample results. Success = the judge sees the 'after' scene exactly
    (sizes included: resizing is an edit)."""
    pred = judge.predict(np.stack([edit(p.before.image, p.instruction) for p in pairs]))
    ok = [scene_matches(pred.objects(i), p.after.scene, with_size=True) for i, p in enumerate(pairs)]
    by_kind: dict[str, list[bool]] = {}
    for p, good in zip(pairs, ok, strict=True):
        by_kind.setdefault(p.kind, []).append(good)
    return {"acc": float(np.mean(ok)), "by_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())}}


def locate(pred: Predictions, i: int, kind: str, color: str, box256: Sequence[int]):
    """The judge's box of the object of this kind and colour nearest to a requested box, or None."""
    cx, cy = (box256[0] + box256[2]) / 2, (box256[1] + box256[3]) / 2
    best, best_d = None, float("inf")
    for o in pred.objects(i):
        if (o.kind, o.color) != (kind, color):
            continue
        ox, oy = o.center()
        d = (ox * 256 - cx) ** 2 + (oy * 256 - cy) ** 2
        if d < best_d:
            best, best_d = o, d
    return None if best is None else pred.box(i, best.row, best.col)


def grounding(ground: Callable[[str, list], np.ndarray], judge: Judge, samples: Sequence) -> float:
    """Mean IoU over all requested objects (0 when the judge finds no such object)."""
    requests = [grounded_boxes(s.scene, s.boxes) for s in samples]
    pred = judge.predict(
        np.stack([ground(grounded_caption(s.scene), r) for s, r in zip(samples, requests, strict=True)])
    )
    ious = []
    for i, request in enumerate(requests):
        for label, box in request:
            color, kind = label.split(" ", 1)
            ious.append(box_iou(locate(pred, i, kind, color, box), box))
    return float(np.mean(ious))


def fid_pair(
    judge: Judge, generated: np.ndarray | None, real_same: np.ndarray, real_other: np.ndarray
) -> dict:
    """fid: judge features of generated images (N, D) vs a disjoint real set; fid_floor: the real
    images of the generated prompts vs that set (what a perfect generator scores)."""
    other = judge.features(real_other)
    out = {"fid_floor": fid(judge.features(real_same), other)}
    if generated is not None:
        out["fid"] = fid(generated, other)
    return out


def tokenizer_ceiling(judge: Judge, tokenizer, samples: Sequence, real_other: np.ndarray) -> dict:
    """The bundle's image tokenizer round trip of the real compositional images, judged like
    generated ones: what a transformer that always chose the right codes would score. Generation
    cannot beat the codes it writes in, so this separates tokenizer loss from model loss."""
    images = np.stack([s.image for s in samples])
    recon = np.concatenate(
        [tokenizer.decode(tokenizer.encode(images[i : i + 100])) for i in range(0, len(images), 100)]
    )
    pred = judge.predict(recon)
    ok = [scene_matches(pred.objects(i), s.scene) for i, s in enumerate(samples)]
    return {"acc": float(np.mean(ok)), "fid": fid(pred.features, judge.features(real_other))}


# ---- the engine as task callables ---------------------------------------------------------------------
@dataclass
class Decoding:
    """The decoding of generated images; by default what an artist gets (engine/settings.py)."""

    cfg: float | None = DEFAULTS.cfg
    temperature: float = DEFAULTS.temperature
    top_p: float = DEFAULTS.top_p
    cdk_alpha: float | None = DEFAULTS.cdk_alpha
    cdk_k: int | None = DEFAULTS.cdk_k
    n: int = DEFAULTS.candidates  # candidates, re-ranked by the engine (retriever score); the best is judged
    retrieve: int = DEFAULTS.retrieve


class EngineTasks:
    """Engine jobs run to the end; the first (best) candidate is the answer."""

    def __init__(self, engine, decoding: Decoding | None = None, seed: int = 0):
        self.engine, self.decoding, self.seed = engine, decoding or Decoding(), seed
        h, _ = engine.vocab.image_grid
        self.grid = engine.vocab.image_grid
        self.image_size = int(engine.image_tokenizer.image_size)
        self.seg_grid = h

    def _sampling(self) -> dict:
        d = self.decoding
        return {"cfg": d.cfg, "temperature": d.temperature, "top_p": d.top_p, "n": d.n}

    def generate(self, prompt: str, seed: int) -> np.ndarray:
        d = self.decoding
        job = self.engine.generate(
            prompt, seed=seed, cdk_alpha=d.cdk_alpha, cdk_k=d.cdk_k, retrieve=d.retrieve, **self._sampling()
        )
        return job.result().candidates[0].image

    def caption(self, image: np.ndarray) -> str:
        return self.engine.caption(image).result().candidates[0].text

    def answer(self, image: np.ndarray, question: str) -> str:
        return self.engine.answer(image, question).result().candidates[0].text

    def segment(self, image: np.ndarray) -> np.ndarray:
        return self.engine.segment(image).result().candidates[0].segmentation

    def inpaint(self, image: np.ndarray, mask: np.ndarray, hint: str) -> np.ndarray:
        self.seed += 1
        return (
            self.engine.inpaint(image, mask, hint, seed=self.seed, **self._sampling())
            .result()
            .candidates[0]
            .image
        )

    def edit(self, image: np.ndarray, instruction: str) -> np.ndarray:
        self.seed += 1
        return (
            self.engine.edit(image, instruction, seed=self.seed, **self._sampling())
            .result()
            .candidates[0]
            .image
        )

    def ground(self, caption: str, request: list) -> np.ndarray:
        self.seed += 1
        return (
            self.engine.ground(caption, request, seed=self.seed, **self._sampling())
            .result()
            .candidates[0]
            .image
        )


# ---- the suite -------------------------------------------------------------------------------------
def run_suite(
    engine,
    judge: Judge,
    n: int = SUITES["quick"],
    seed: int = 0,
    only: Sequence[str] | None = None,
    decoding: Decoding | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """All metrics (or those in `only`) on n items each. A task the model was not trained for gives
    null with a note; so does a metric whose task fails."""
    tasks = EngineTasks(engine, decoding, seed)
    size, wanted = tasks.image_size, set(only or METRICS)
    out: dict = {m: None for m in METRICS if m in wanted}
    notes: dict[str, str] = {}
    details: dict = {}
    seconds: dict[str, float] = {}

    def attempt(names: tuple[str, ...], body: Callable[[], dict]) -> None:
        if not wanted.intersection(names):
            return
        t0 = time.perf_counter()
        log(f"{', '.join(names)} ...")
        try:
            values = body()
        except UnsupportedTaskError as exc:
            notes.update({m: f"not trained for it: {exc}" for m in names if m in wanted})
        except TesseraError as exc:
            notes.update({m: f"failed: {exc}" for m in names if m in wanted})
        else:
            out.update({m: values.pop(m) for m in names if m in wanted and m in values})
            details.update(values)
        seconds[names[0]] = round(time.perf_counter() - t0, 1)
        log(f"  {', '.join(f'{m}={out.get(m)}' for m in names if m in wanted)}  ({seconds[names[0]]} s)")

    test = compositional_scenes("test", n, size, seed)
    real_test = np.stack([s.image for s in test])
    real_other = np.stack([s.image for s in compositional_scenes("val", n, size, seed)])

    def comp() -> dict:
        r = compositional(tasks.generate, judge, test, seed)
        values = {"compositional_acc": r["acc"], "compositional_size_acc": r["size_acc"],
                  "compositional_object_recall": r["object_recall"]}
        if "fid" in wanted:
            values["fid"] = fid_pair(judge, r["pred"].features, real_test, real_other)["fid"]
        return values

    def heldout() -> dict:
        r = compositional(tasks.generate, judge, compositional_scenes("heldout", n, size, seed), seed)
        return {"heldout_compositional_acc": r["acc"], "heldout_size_acc": r["size_acc"],
                "heldout_object_recall": r["object_recall"]}

    def floor() -> dict:
        ceiling = tokenizer_ceiling(judge, engine.image_tokenizer, test, real_other)
        return {
            **fid_pair(judge, None, real_test, real_other),
            "tokenizer_ceiling_compositional_acc": ceiling["acc"],
            "tokenizer_ceiling_fid": ceiling["fid"],
        }

    world = ShapesWorld("test", seed=seed, size=size)
    samples = [world.sample(i) for i in range(n)]

    def vqa_metric() -> dict:
        r = vqa(tasks.answer, samples, seed)
        return {"vqa_acc": r["acc"], "vqa_by_type": r["by_type"]}

    def infill_metric() -> dict:
        r = infill(tasks.inpaint, judge, samples, tasks.grid)
        return {"infill_acc": r["acc"], "infill_outside_unchanged": r["outside_unchanged"]}

    def edit_metric() -> dict:
        r = editing(tasks.edit, judge, [world.edit_sample(i) for i in range(n)])
        return {"edit_success": r["acc"], "edit_by_kind": r["by_kind"]}

    attempt(("compositional_acc", "fid"), comp)
    attempt(("fid_floor",), floor)
    attempt(("heldout_compositional_acc",), heldout)
    attempt(("caption_exact",), lambda: {"caption_exact": caption_exact(tasks.caption, samples)})
    attempt(("vqa_acc",), vqa_metric)
    attempt(("seg_miou",), lambda: {"seg_miou": segmentation(tasks.segment, samples, tasks.seg_grid)})
    attempt(("infill_acc", "infill_outside_unchanged"), infill_metric)
    attempt(("edit_success",), edit_metric)
    attempt(("grounding_iou",), lambda: {"grounding_iou": grounding(tasks.ground, judge, samples)})
    return {
        **out,
        "notes": notes,
        "details": details,
        "seconds": seconds,
        "model_id": engine.model_id,
        "n": n,
        "seed": seed,
        "judge": judge_summary(judge),
    }


def judge_summary(judge: Judge) -> dict:
    acc = judge.info["accuracy"]
    return {split: {k: acc[split][k] for k in ("kind", "color", "size", "exact")} for split in acc}
