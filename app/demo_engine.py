"""DemoEngine: a stand-in for engine.engine.Engine that draws Shapes World-like scenes with numpy.

It is NOT a model. It exists so that the studio can be shown (`tessera studio --screenshot F --demo`)
and tested (TESSERA_FAKE_ENGINE=1) without a trained bundle. It follows the Engine API exactly:
every task returns an `engine.jobs.Job` that streams the same typed events a real job does, one
decode step at a time (a short sleep stands in for the model), and honours `cancel()` between steps.

Scenes come from the prompt ("a red circle and a blue star"); captions, answers, edits and
segmentations are exact for images this engine drew itself and rough guesses for any other image.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from engine.errors import BadInputError, UnsupportedTaskError
from engine.events import Candidate, Finished, PartialImage, Progress, Retrieved, RetrievedDocument
from engine.jobs import Job
from engine.library import UserLibrary
from engine.retriever import normalize
from engine.settings import DEFAULTS as D
from engine.shapes_world import CELL_CENTERS, COLORS, KINDS, POSITIONS
from engine.shapes_world import PLAIN_BACKGROUNDS as BACKGROUNDS
from engine.task_table import TASKS, EngineTask
from engine.tasks import compositor, pixel_mask

SIZE, GRID, SS = 64, 8, 4  # image side, code grid side, supersampling factor for antialiasing


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    cx: float  # centre and radius as fractions of the image side
    cy: float
    r: float


def _inside(kind: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Unit-radius glyphs centred at 0 (y grows downwards)."""
    if kind == "circle":
        return x * x + y * y <= 1
    if kind == "square":
        return np.maximum(abs(x), abs(y)) <= 0.8
    if kind == "triangle":
        return (y <= 0.75) & (abs(x) <= (y + 1) / 1.75)
    if kind == "star":
        ang = np.arctan2(y, x) + np.pi / 2
        return np.hypot(x, y) <= 0.45 + 0.55 * np.abs(np.cos(2.5 * ang)) ** 3
    if kind == "heart":
        hx, hy = x * 1.15, -y * 1.15 + 0.15
        return (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy**3 <= 0
    return ((abs(x) <= 0.3) & (abs(y) <= 1)) | ((abs(y) <= 0.3) & (abs(x) <= 1))  # cross


@lru_cache(maxsize=64)
def render(shapes: tuple[Shape, ...], background: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (64, 64, 3) uint8 antialiased, class map (64, 64) uint8) of a scene."""
    n = SIZE * SS
    yy, xx = (np.mgrid[0:n, 0:n].astype(np.float32) + 0.5) / n
    rgb = np.empty((n, n, 3), np.float32)
    rgb[:] = BACKGROUNDS[background]
    classes = np.zeros((n, n), np.uint8)
    for s in shapes:
        hit = _inside(s.kind, (xx - s.cx) / s.r, (yy - s.cy) / s.r)
        rgb[hit] = COLORS[s.color]
        classes[hit] = KINDS.index(s.kind) + 1
    image = rgb.reshape(SIZE, SS, SIZE, SS, 3).mean(axis=(1, 3))
    cls = classes.reshape(SIZE, SS, SIZE, SS).transpose(0, 2, 1, 3).reshape(SIZE, SIZE, SS * SS)
    votes = (cls[..., None] == np.arange(len(KINDS) + 1)).sum(axis=2)  # per pixel, per class
    out = np.rint(image).astype(np.uint8), votes.argmax(axis=2).astype(np.uint8)
    for a in out:
        a.setflags(write=False)  # cached: shared by every job that draws this scene
    return out


def parse_scene(prompt: str, rng: np.random.Generator) -> tuple[tuple[Shape, ...], str]:
    """Objects named as '<colour> [size] <kind>' in the prompt; random ones if none is named."""
    words = re.findall(r"[a-z]+", prompt.lower())
    wanted: list[tuple[str | None, str]] = []
    for i, w in enumerate(words):
        kind = w[:-1] if w.endswith("s") and w[:-1] in KINDS else w
        if kind in KINDS:
            color = next((p for p in reversed(words[max(0, i - 3) : i]) if p in COLORS), None)
            wanted.append((color, kind))
    if not wanted:
        wanted = [(None, KINDS[int(rng.integers(len(KINDS)))]) for _ in range(int(rng.integers(1, 3)))]
    cells = rng.permutation(9)[: len(wanted[:3])]
    shapes = []
    for (color, kind), cell in zip(wanted[:3], cells, strict=False):
        color = color or list(COLORS)[int(rng.integers(len(COLORS)))]
        cx, cy = CELL_CENTERS[cell % 3], CELL_CENTERS[cell // 3]
        if len(wanted) == 1:
            cx, cy = 0.5 + rng.uniform(-0.08, 0.08), 0.5 + rng.uniform(-0.08, 0.08)
        r = float(rng.choice([0.13, 0.16, 0.19])) * (1.5 if len(wanted) == 1 else 1.0)
        shapes.append(Shape(kind, color, cx, cy, r))
    background = next((b for b in BACKGROUNDS if b.split()[0] in words and b.split()[-1] in words), None)
    return tuple(shapes), background or list(BACKGROUNDS)[int(rng.integers(2))]


def describe(shapes: tuple[Shape, ...], background: str) -> str:
    if not shapes:
        return f"an empty {background} canvas"
    names = [f"a {s.color} {s.kind} at the {_cell(s)}" for s in shapes]
    body = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{body} on a {background} background"


def _cell(s: Shape) -> str:
    col, row = min(int(s.cx * 3), 2), min(int(s.cy * 3), 2)
    return POSITIONS[row][col].replace("center", "centre")


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise BadInputError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return image[..., :3]


def palette_shares(rgb: np.ndarray) -> np.ndarray:
    """The share of the pixels close to each of the shape colours, (len(COLORS),) float32."""
    palette = np.array(list(COLORS.values()), np.float32)
    px = rgb.reshape(-1, 3).astype(np.float32)
    dist = np.linalg.norm(px[:, None] - palette[None], axis=2)
    near = dist.min(1) < 60
    return np.bincount(dist.argmin(1)[near], minlength=len(COLORS)).astype(np.float32) / len(px)


class PaletteEmbedder:
    """The demo's retriever (an engine.retriever.Embedder): an image is its shares of the shape
    colours, a text the shape colours it names. The constant last dimension keeps every vector nonzero."""

    name = "demo-palette"
    dim = len(COLORS) + 1

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        return _with_bias(np.stack([palette_shares(_rgb(im)) for im in images]))

    def embed_texts(self, texts) -> np.ndarray:
        words = [set(re.findall(r"[a-z]+", t.lower())) for t in texts]
        return _with_bias(np.array([[c in w for c in COLORS] for w in words], np.float32))


def _with_bias(x: np.ndarray) -> np.ndarray:
    return normalize(np.concatenate([x, np.full((len(x), 1), 0.05, np.float32)], 1))


class DemoEngine:
    model_id = "demo-shapes (no model)"
    provider = "CPU"
    tasks = frozenset({EngineTask.GENERATE, EngineTask.INPAINT, EngineTask.EDIT, EngineTask.CAPTION,
                       EngineTask.ANSWER, EngineTask.SEGMENT})
    seg_class_names = ("background", *KINDS)
    image_size = SIZE
    unsupported: dict[str, str] = {}

    def __init__(self, step_delay: float = 0.004) -> None:
        self.step_delay = step_delay  # seconds per decode step: the "model"
        # the real user library, in a folder of its own: the demo starts with an empty one and never
        # touches the artist's
        self._library_dir = tempfile.TemporaryDirectory(prefix="tessera-demo-library-")
        self.library = UserLibrary(PaletteEmbedder(), self._library_dir.name)
        self._scenes: dict[bytes, tuple[tuple[Shape, ...], str, np.ndarray]] = {}  # images it drew

    @classmethod
    def load(cls, bundle_dir=None) -> DemoEngine:
        return cls()

    # -- tasks -------------------------------------------------------------------------------------
    def generate(self, prompt: str, *, n: int = 1, seed: int | None = None, cfg: float | None = D.cfg,
                 temperature: float = D.temperature, top_p: float = D.top_p,
                 cdk_alpha: float | None = D.cdk_alpha, cdk_k: int | None = D.cdk_k,
                 retrieve: int = D.retrieve) -> Job:
        if not prompt.strip():
            raise BadInputError("the prompt is empty")
        seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
        settings = dict(seed=seed, n=n, cfg=cfg, temperature=temperature, top_p=top_p,
                        cdk_alpha=cdk_alpha, cdk_k=cdk_k, retrieve=retrieve)
        scenes = [parse_scene(prompt, np.random.default_rng(seed + i)) for i in range(n)]
        docs = self._retrieve(prompt, scenes[0][0], retrieve, seed)
        return Job(lambda job: self._stream(job, "generate", scenes, docs, settings), "generate")

    def inpaint(self, image: np.ndarray, mask: np.ndarray, prompt: str = "", *, n: int = 1,
                seed: int | None = None, cfg: float | None = D.cfg, temperature: float = D.temperature,
                top_p: float = D.top_p) -> Job:
        """Composited by the engine's own compositor: the original's size, every unmasked pixel unchanged."""
        base = _rgb(image)
        alpha = pixel_mask(mask, base.shape[:2])
        mask = alpha > 0
        seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
        ys, xs = np.nonzero(mask)
        cx, cy = (xs.mean() + 0.5) / mask.shape[1], (ys.mean() + 0.5) / mask.shape[0]
        r = max(np.ptp(xs) / mask.shape[1], np.ptp(ys) / mask.shape[0]) * 0.45 + 0.05
        known = self._scenes.get(base.tobytes())
        h, w = mask.shape
        kept = tuple(s for s in known[0] if not mask[int(s.cy * h), int(s.cx * w)]) if known else ()
        scenes = []
        for i in range(n):
            new, bg = parse_scene(prompt, np.random.default_rng(seed + i))
            scenes.append((kept + (replace(new[0], cx=cx, cy=cy, r=r),), known[1] if known else bg))
        settings = {"seed": seed, "n": n, "cfg": cfg, "temperature": temperature, "top_p": top_p}
        composite = compositor(base, alpha)
        return Job(lambda job: self._stream(job, "inpaint", scenes, (), settings, composite), "inpaint")

    def edit(self, image: np.ndarray, instruction: str, *, n: int = 1, seed: int | None = None,
             cfg: float | None = D.cfg, temperature: float = D.temperature, top_p: float = D.top_p) -> Job:
        base = _rgb(image)
        if not instruction.strip():
            raise BadInputError("the instruction is empty")
        known = self._scenes.get(base.tobytes())
        if known is None:
            raise BadInputError("the demo engine can only edit images it generated itself")
        words = re.findall(r"[a-z]+", instruction.lower())
        color = next((w for w in words if w in COLORS), None)
        target = next((w for w in words if w in KINDS), None)
        shapes = known[0]
        if "remove" in words or "delete" in words:
            shapes = tuple(s for s in shapes if target not in (None, s.kind))
        elif color:
            shapes = tuple(replace(s, color=color) if target in (None, s.kind) else s for s in shapes)
        settings = {"seed": 0 if seed is None else seed}
        return Job(lambda job: self._stream(job, "edit", [(shapes, known[1])] * n, (), settings), "edit")

    def caption(self, image: np.ndarray, *, temperature: float | None = None, seed: int | None = None,
                retrieve: int = 0) -> Job:
        text = self.describe_image(_rgb(image))
        return Job(lambda job: self._text(job, "caption", Candidate(text=text)), "caption")

    def answer(self, image: np.ndarray, question: str, *, temperature: float | None = None,
               seed: int | None = None) -> Job:
        rgb = _rgb(image)
        if not question.strip():
            raise BadInputError("the question is empty")
        shapes, bg, _ = self._scenes.get(rgb.tobytes(), ((), "unknown", None))
        q = question.lower()
        named = [s for s in shapes if s.kind in q] or list(shapes)
        if not shapes:
            text = self.describe_image(rgb)
        elif "how many" in q:
            text = str(len(named if any(k in q for k in KINDS) else shapes))
        elif "colo" in q:
            text = named[0].color
        elif "where" in q:
            text = _cell(named[0])
        elif "background" in q:
            text = bg
        else:
            text = "yes" if any(s.kind in q for s in shapes) else "no"
        return Job(lambda job: self._text(job, "answer", Candidate(text=text)), "answer")

    def segment(self, image: np.ndarray) -> Job:
        rgb = _rgb(image)
        known = self._scenes.get(rgb.tobytes())
        classes = known[2] if known else self._guess_classes(rgb)
        h, w = classes.shape
        cells = classes[: h - h % GRID, : w - w % GRID].reshape(GRID, h // GRID, GRID, w // GRID)
        cells = cells.transpose(0, 2, 1, 3).reshape(GRID, GRID, -1)
        grid = np.array([[np.bincount(c, minlength=len(KINDS) + 1).argmax() for c in row] for row in cells])
        result = Candidate(segmentation=grid.astype(np.int64))
        return Job(lambda job: self._text(job, "segment", result), "segment")

    def ground(self, prompt: str, boxes, *, n: int = 1, seed: int | None = None, cfg: float | None = D.cfg,
               temperature: float = D.temperature, top_p: float = D.top_p) -> Job:
        raise _unsupported(EngineTask.GROUND)

    def from_layout(self, layout, prompt: str = "", *, n: int = 1, seed: int | None = None,
                    cfg: float | None = D.cfg, temperature: float = D.temperature,
                    top_p: float = D.top_p) -> Job:
        raise _unsupported(EngineTask.LAYOUT)

    # -- helpers -----------------------------------------------------------------------------------
    def describe_image(self, rgb: np.ndarray) -> str:
        known = self._scenes.get(np.ascontiguousarray(rgb).tobytes())
        if known:
            return describe(known[0], known[1])
        shares = palette_shares(rgb)
        found = [list(COLORS)[i] for i in np.argsort(-shares) if shares[i] > 0.02][:2]
        return f"an image with {' and '.join(found)} shapes" if found else "an image without bright shapes"

    def _guess_classes(self, rgb: np.ndarray) -> np.ndarray:
        """For images it did not draw: saturated pixels count as 'circle', a rough stand-in."""
        px = rgb.astype(np.int16)
        saturated = (px.max(axis=2) - px.min(axis=2)) > 60
        return saturated.astype(np.uint8)

    def _retrieve(self, prompt: str, shapes: tuple[Shape, ...], k: int, seed: int) -> tuple:
        docs = []
        if k > 0 and len(self.library):
            (hits,) = self.library.search(self.library.embedder.embed_texts([prompt]), k)
            for entry_id, score in hits:
                caption, thumb = self.library.document(entry_id)
                docs.append(RetrievedDocument(caption or self.describe_image(thumb), thumb, score, "library"))
        rng = np.random.default_rng(seed + 1000)
        for i in range(k):
            base = shapes[i % len(shapes)] if shapes else Shape("circle", "red", 0.5, 0.5, 0.2)
            s = replace(base, cx=0.5, cy=0.5, r=0.22, color=list(COLORS)[int(rng.integers(len(COLORS)))])
            bg = list(BACKGROUNDS)[i % 2]
            docs.append(RetrievedDocument(describe((s,), bg), render((s,), bg)[0], 0.8 - 0.07 * i, "bundle"))
        docs.sort(key=lambda d: -d.score)
        return tuple(docs[:k])

    def _stream(self, job: Job, task: str, scenes, docs, settings: dict, composite=None):
        """Decode steps over the 8x8 code grid: Progress every step, a PartialImage per finished row.
        composite: model-size images (N, S, S, 3) -> final images (engine.tasks.compositor)."""
        composite = composite or (lambda images: images)
        if docs:
            yield Retrieved(job.id, docs)
        finals = []
        for shapes, bg in scenes:
            image, classes = render(shapes, bg)
            finals.append(image)
            self._remember(image, shapes, bg, classes)
        start = time.perf_counter()
        total = GRID * GRID
        for step in range(1, total + 1):
            time.sleep(self.step_delay)
            if job.cancelled:
                return
            yield Progress(job.id, step, total, step / max(time.perf_counter() - start, 1e-6))
            if step % GRID == 0:
                rows = step // GRID
                for i, final in enumerate(finals):
                    partial = final.copy()
                    partial[rows * (SIZE // GRID) :] = 128
                    yield PartialImage(job.id, i, rows, GRID, composite(partial[None])[0])
        rng = np.random.default_rng(settings.get("seed", 0))
        scores = np.sort(rng.uniform(0.2, 0.35, len(finals)))[::-1]
        cands = tuple(Candidate(image=im, score=float(s))
                      for im, s in zip(composite(np.stack(finals)), scores, strict=True))
        yield Finished(job.id, task, cands, settings, time.perf_counter() - start)

    def _text(self, job: Job, task: str, candidate: Candidate):
        start = time.perf_counter()
        for step in range(1, 9):
            time.sleep(self.step_delay)
            if job.cancelled:
                return
            yield Progress(job.id, step, 8, step / max(time.perf_counter() - start, 1e-6))
        yield Finished(job.id, task, (candidate,), {}, time.perf_counter() - start)

    def _remember(self, image: np.ndarray, shapes, bg: str, classes: np.ndarray) -> None:
        if len(self._scenes) > 512:
            self._scenes.pop(next(iter(self._scenes)))
        self._scenes[image.tobytes()] = (tuple(shapes), bg, classes)


def _unsupported(task: EngineTask) -> UnsupportedTaskError:
    return UnsupportedTaskError(f"the demo engine does no {TASKS[task].description} ({task}): open a model")
