"""The judge: a small CNN trained on rendered Shapes World ground truth (never on generated images)
that reads a picture back into a scene, so generated images can be scored exactly.

For each of the 9 layout cells it predicts empty-or-kind, colour and size (the position is the cell);
a light decoder head gives per-pixel classes (SEG_CLASSES); its globally pooled activations,
standardised, are the feature vector for FID. `Judge.load` refuses weights whose measured accuracy
on real test or heldout images is below 99 %: a metric is only as trustworthy as its instrument.

    judge = Judge.load()                 # assets/judge/
    pred = judge.predict(images)         # uint8 (N, H, W, 3), any H = W (resized to 64)
    pred.objects(0)                      # (ShapeObject(kind, color, size, row, col), ...)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from engine.errors import BadInputError, TesseraError
from engine.io import atomic_write_bytes, atomic_write_text
from training.data.shapes import (
    BACKGROUNDS,
    CELL_CENTERS,
    COLORS,
    KINDS,
    SEG_CLASSES,
    SIZES,
    Scene,
    ShapeObject,
    ShapesWorld,
    boxes,
    class_mask,
    random_scene,
    render,
)

SIZE = 64  # the judge reads 64x64 images
CELLS = 9
COLOR_NAMES = tuple(COLORS)
IGNORE = -100
MIN_ACCURACY = 0.99
GATED = ("kind", "color", "size", "empty", "exact")  # each must reach MIN_ACCURACY on test and heldout
WEIGHTS_FILE, INFO_FILE = "judge.safetensors", "judge.json"


class JudgeError(TesseraError):
    """The judge is missing, or too inaccurate to be trusted with a verdict."""


def default_judge_dir() -> Path:
    from engine.paths import assets_dir

    return assets_dir() / "judge"


# ---- the network ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeConfig:
    stem: int = 32  # channels after the 4x4 patch stem (16x16)
    widths: tuple[int, int] = (48, 96)  # channels at 16x16 and 8x8
    hidden: int = 128  # per-cell MLP width
    embed: int = 16  # per-cell embedding (penultimate layer of the cell heads)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class JudgeNet(nn.Module):
    """4x4 patch stem -> 16x16 -> 8x8 (receptive field 44 px: a whole glyph and its neighbours).
    Cell heads read both maps at the 9 cell centres (one head shared by all cells, so every cell
    learns from every object); the pixel head is a 1x1 conv + pixel shuffle back to 64x64.
    Small on purpose: it trains on two shared CPU cores."""

    def __init__(self, cfg: JudgeConfig = JudgeConfig()):
        super().__init__()
        self.cfg = cfg
        w16, w8 = cfg.widths
        stem = nn.Sequential(
            nn.Conv2d(3, cfg.stem, 4, 4, bias=False), nn.BatchNorm2d(cfg.stem), nn.ReLU(inplace=True)
        )
        self.b16 = nn.Sequential(stem, _conv(cfg.stem, w16), _conv(w16, w16))
        self.b8 = nn.Sequential(_conv(w16, w8, 2), _conv(w8, w8))
        self.cell_mlp = nn.Sequential(
            nn.Linear(w16 + w8, cfg.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(cfg.hidden, cfg.embed),
            nn.ReLU(inplace=True),
        )
        self.cell_out = nn.Linear(cfg.embed, 1 + len(KINDS) + len(COLORS) + len(SIZES))
        n_cls = len(SEG_CLASSES)
        self.seg16 = nn.Conv2d(w16, n_cls * 16, 1)
        self.seg8 = nn.Conv2d(w8, n_cls * 16, 1)
        # Cell centres in grid_sample's [-1, 1] coordinates, raster order (row-major).
        c = torch.tensor([2 * v - 1 for v in CELL_CENTERS])
        grid = torch.stack(torch.meshgrid(c, c, indexing="ij")[::-1], dim=-1).reshape(1, 1, CELLS, 2)
        self.register_buffer("cell_grid", grid, persistent=False)
        # FID features are standardised with statistics of real renders (set by `calibrate`), so
        # every channel counts alike instead of the few with the largest activations.
        self.register_buffer("feature_mean", torch.zeros(w16 + w8))
        self.register_buffer("feature_std", torch.ones(w16 + w8))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: float (B, 3, 64, 64) in [-1, 1] -> logits per cell, per-pixel logits, features."""
        f16 = self.b16(x)
        f8 = self.b8(f16)
        grid = self.cell_grid.expand(x.shape[0], -1, -1, -1)
        cells = torch.cat([F.grid_sample(f, grid, align_corners=False) for f in (f16, f8)], dim=1)
        emb = self.cell_mlp(cells.squeeze(2).transpose(1, 2))  # (B, 9, embed)
        logits = self.cell_out(emb)
        nk, nc = 1 + len(KINDS), len(COLORS)
        seg = self.seg16(f16) + F.interpolate(self.seg8(f8), scale_factor=2, mode="nearest")
        return {
            "kind": logits[..., :nk],  # 0 = empty cell
            "color": logits[..., nk : nk + nc],
            "size": logits[..., nk + nc :],
            "seg": F.pixel_shuffle(seg, 4),  # (B, classes, 64, 64)
            # FID features: global average pooling of both maps (appearance statistics, like Inception
            # pool features; the cell embeddings were measured blind to blur and VQ artefacts)
            "features": (torch.cat([f16.mean(dim=(2, 3)), f8.mean(dim=(2, 3))], dim=1) - self.feature_mean)
            / self.feature_std,
        }


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, 64, 64) in [-1, 1]; other square sizes are resized."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise BadInputError(f"the judge reads uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    if images.shape[1:3] != (SIZE, SIZE):
        images = np.stack(
            [np.asarray(Image.fromarray(im).resize((SIZE, SIZE), Image.BILINEAR)) for im in images]
        )
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ---- targets ---------------------------------------------------------------------------------------
def cell_targets(scene: Scene) -> np.ndarray:
    """(3, 9) int64: kind (0 empty, 1 + KINDS index), colour and size index (IGNORE where empty)."""
    out = np.full((3, CELLS), IGNORE, np.int64)
    out[0] = 0
    for o in scene.objects:
        c = o.row * 3 + o.col
        out[:, c] = (KINDS.index(o.kind) + 1, COLOR_NAMES.index(o.color), SIZES.index(o.size))
    return out


def _scene_batch(rng: np.random.Generator, n: int, max_objects: int, p_empty: float) -> list[Scene]:
    """Random scenes with Shapes World's rules, every colour-shape pair allowed: the held-out pairs
    are held out from the model, not from the instrument. A judge trained on the train split's pairs
    only read 15 % of held-out objects wrong (it had never seen a red star), which would have made
    heldout_compositional_acc measure the judge instead of the model."""
    scenes = []
    for _ in range(n):
        if rng.random() < p_empty:  # a generator may draw nothing: the judge must say so
            scenes.append(Scene((), tuple(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]))
        else:
            scenes.append(random_scene(rng, (1, max_objects), forbidden=frozenset()))
    return scenes


def _tensors(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images = np.stack([render(s, SIZE) for s in scenes])
    masks = np.stack([class_mask(s, SIZE) for s in scenes])
    targets = np.stack([cell_targets(s) for s in scenes])
    return to_input(images), torch.from_numpy(masks.astype(np.int64)), torch.from_numpy(targets)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mild, label-preserving noise so the judge does not depend on perfectly crisp renders: a
    light blur on half the images, small gain/offset per channel, pixel noise."""
    b = x.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0]) / 4
    kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    pick = (torch.rand(b, 1, 1, 1, generator=gen) < 0.5).float()
    x = pick * blurred + (1 - pick) * x
    gain = 1 + 0.03 * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    offset = 0.03 * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    noise = torch.randn(x.shape, generator=gen) * torch.rand(b, 1, 1, 1, generator=gen) * 0.03
    return (x * gain + offset + noise).clamp(-1, 1)


# ---- training --------------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    max_objects: int = 4  # more objects per image than the splits hold (<= 3): more cells per step
    p_empty: float = 0.03
    seg_weight: float = 0.5
    seed: int = 0
    eval_n: int = 2000  # test and heldout images scored at the end


def loss_fn(out: dict[str, torch.Tensor], masks: torch.Tensor, targets: torch.Tensor, seg_weight: float):
    kind = F.cross_entropy(out["kind"].flatten(0, 1), targets[:, 0].flatten())
    color = F.cross_entropy(out["color"].flatten(0, 1), targets[:, 1].flatten(), ignore_index=IGNORE)
    size = F.cross_entropy(out["size"].flatten(0, 1), targets[:, 2].flatten(), ignore_index=IGNORE)
    seg = F.cross_entropy(out["seg"], masks)
    return kind + color + size + seg_weight * seg


def train(
    cfg: TrainConfig, net_cfg: JudgeConfig = JudgeConfig(), log: Callable[[str], None] = print
) -> tuple[JudgeNet, dict]:
    """Train on random scenes rendered on the fly, then measure on real test and heldout images."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = JudgeNet(net_cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))

    t0, cpu0 = time.perf_counter(), time.process_time()
    net.train()
    for step in range(cfg.steps):
        x, masks, targets = _tensors(_scene_batch(rng, cfg.batch_size, cfg.max_objects, cfg.p_empty))
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = loss_fn(net(_augment(x, gen)), masks, targets, cfg.seg_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - t0:6.0f} s")
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    calibrate(net.eval(), cfg.seed)
    accuracy = {split: evaluate(net, split, cfg.eval_n) for split in ("test", "heldout")}
    info = {
        "config": dataclasses.asdict(net_cfg),
        "accuracy": accuracy,
        "min_accuracy": MIN_ACCURACY,
        "training": {
            **dataclasses.asdict(cfg),
            "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1),
            "torch_threads": torch.get_num_threads(),
            "data": (
                f"{cfg.steps * cfg.batch_size} random Shapes World scenes rendered on the fly (all 48 "
                f"colour-shape pairs, 1-{cfg.max_objects} objects, {cfg.p_empty:.0%} empty, seed "
                f"{cfg.seed}); ground truth only, never generated images"
            ),
        },
        "evaluated_on": f"the first {cfg.eval_n} real images of the test and heldout splits (seed 0)",
    }
    return net, info


@torch.no_grad()
def calibrate(net: JudgeNet, seed: int = 0, n: int = 2000) -> None:
    """Set the FID feature standardisation from n random real renders (a stream of its own)."""
    rng = np.random.default_rng([seed, 1])
    images = np.stack([render(s, SIZE) for s in _scene_batch(rng, n, 3, 0.0)])
    net.feature_mean.zero_()
    net.feature_std.fill_(1.0)
    raw = torch.from_numpy(_run(net.eval(), images)["features"])
    net.feature_mean.copy_(raw.mean(0))
    net.feature_std.copy_(raw.std(0) + 1e-6)


# ---- measuring -------------------------------------------------------------------------------------
@torch.no_grad()
def _run(net: JudgeNet, images: np.ndarray, batch_size: int = 250) -> dict[str, np.ndarray]:
    keys = ("kind", "color", "size", "classes", "palette", "features")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for i in range(0, len(images), batch_size):
        x = to_input(images[i : i + batch_size])
        out = net(x)
        for key in ("kind", "color", "size"):
            parts[key].append(out[key].argmax(-1).numpy())
        parts["classes"].append(out["seg"].argmax(1).numpy().astype(np.uint8))
        parts["palette"].append(_palette_index(x))
        parts["features"].append(out["features"].numpy().astype(np.float64))
    return {k: np.concatenate(v) for k, v in parts.items()}


# The 8 object colours, then every background colour: a pixel's nearest entry says whose it can be.
PALETTE = (
    torch.tensor(
        [COLORS[c] for c in COLOR_NAMES] + [rgb for spec, _ in BACKGROUNDS.values() for rgb in spec[1:]],
        dtype=torch.float32,
    )
    .div(127.5)
    .sub(1.0)
)


def _palette_index(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W) uint8 index of the nearest PALETTE colour."""
    d = ((x.permute(0, 2, 3, 1)[..., None, :] - PALETTE) ** 2).sum(-1)
    return d.argmin(-1).numpy().astype(np.uint8)


def evaluate(
    net: JudgeNet, split: str = "test", n: int = 2000, seed: int = 0, images: np.ndarray | None = None
) -> dict[str, float]:
    """Accuracy on the first n real images of a split (or on `images` of those scenes, e.g. their
    VQ reconstructions). Per object attribute over ground-truth objects
    (occluded ones included); `empty` over empty cells; `exact` = every cell right (kind or empty,
    colour, size); `pixel_acc` of the per-pixel classes; `box_iou` of judge boxes vs true boxes."""
    world = ShapesWorld(split, seed=seed)
    scenes = [world.scene(i) for i in range(n)]
    if images is None:
        images = np.stack([render(s, SIZE) for s in scenes])
    pred = Predictions(**_run(net.eval(), images))
    t = np.stack([cell_targets(s) for s in scenes])  # (n, 3, 9)
    obj = t[:, 0] > 0
    kind_ok = pred.kind == t[:, 0]
    color_ok = pred.color == t[:, 1]
    size_ok = pred.size == t[:, 2]
    cell_ok = kind_ok & (~obj | (color_ok & size_ok))
    masks = np.stack([class_mask(s, SIZE) for s in scenes])
    ious = [
        box_iou(pred.box(i, o.row, o.col), b)
        for i, s in enumerate(scenes)
        for o, b in zip(s.objects, boxes(s), strict=True)
    ]
    return {
        "kind": float(kind_ok[obj].mean()),
        "color": float(color_ok[obj].mean()),
        "size": float(size_ok[obj].mean()),
        "empty": float(kind_ok[~obj].mean()),
        "exact": float(cell_ok.all(axis=1).mean()),
        "pixel_acc": float((pred.classes == masks).mean()),
        "box_iou": float(np.mean(ious)),
        "n_images": n,
        "n_objects": int(obj.sum()),
    }


def box_iou(a: tuple[int, int, int, int] | None, b: tuple[int, int, int, int] | None) -> float:
    """IoU of two inclusive (x0, y0, x1, y1) boxes; 0 when either is missing."""
    if a is None or b is None:
        return 0.0
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(w, 0) * max(h, 0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@dataclass
class Predictions:
    kind: np.ndarray  # (N, 9) int: 0 = empty, else 1 + KINDS index
    color: np.ndarray  # (N, 9) COLORS index (meaningless where empty)
    size: np.ndarray  # (N, 9) SIZES index
    classes: np.ndarray  # (N, 64, 64) uint8 per-pixel SEG_CLASSES ids
    palette: np.ndarray  # (N, 64, 64) uint8 index of each pixel's nearest PALETTE colour
    features: np.ndarray  # (N, D) float64, for FID

    def __len__(self) -> int:
        return len(self.kind)

    def objects(self, i: int) -> tuple[ShapeObject, ...]:
        """The objects the judge sees in image i, in cell (raster) order."""
        return tuple(
            ShapeObject(KINDS[k - 1], COLOR_NAMES[self.color[i, c]], SIZES[self.size[i, c]], c // 3, c % 3)
            for c, k in enumerate(self.kind[i])
            if k > 0
        )

    def box(self, i: int, row: int, col: int, size: int = 256) -> tuple[int, int, int, int] | None:
        """Box (0..size-1 grid, like shapes.boxes) of the object the judge sees in a cell: the pixels
        classed as its kind whose nearest palette colour is its colour (the colour test keeps a
        neighbour's edge, misclassed by the pixel head, out of the box), each given to the nearest
        cell holding an object of that kind and colour."""
        c = row * 3 + col
        k, color = int(self.kind[i, c]), int(self.color[i, c])
        if k == 0:
            return None
        twins = np.flatnonzero((self.kind[i] == k) & (self.color[i] == color))
        ys, xs = np.nonzero((self.classes[i] == k) & (self.palette[i] == color))
        if len(twins) > 1 and len(ys):
            centres = np.asarray([[CELL_CENTERS[j // 3], CELL_CENTERS[j % 3]] for j in twins]) * SIZE
            d = (ys[:, None] + 0.5 - centres[None, :, 0]) ** 2 + (
                xs[:, None] + 0.5 - centres[None, :, 1]
            ) ** 2
            mine = d.argmin(axis=1) == int(np.flatnonzero(twins == c)[0])
            ys, xs = ys[mine], xs[mine]
        if not len(ys):
            return None
        s = size / SIZE
        return (
            int(xs.min() * s),
            int(ys.min() * s),
            int((xs.max() + 1) * s) - 1,
            int((ys.max() + 1) * s) - 1,
        )


# ---- the shipped judge ------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(net: JudgeNet, info: dict, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    atomic_write_bytes(weights, save_safetensors(state))
    info = {**info, "weights_sha256": _sha256(weights)}
    atomic_write_text(directory / INFO_FILE, json.dumps(info, indent=2) + "\n")
    return directory


class Judge:
    """A trained judge whose measured accuracy clears MIN_ACCURACY (see `load`)."""

    def __init__(self, net: JudgeNet, info: dict):
        self.net = net.eval()
        self.info = info

    @classmethod
    def load(cls, directory: str | Path | None = None, min_accuracy: float = MIN_ACCURACY) -> Judge:
        """Load weights + judge.json; refuse when the stored test or heldout accuracy of any gated
        figure (kind, colour, size, empty cells, whole scene) is below `min_accuracy`."""
        directory = Path(directory) if directory is not None else default_judge_dir()
        weights, info_path = directory / WEIGHTS_FILE, directory / INFO_FILE
        if not weights.is_file() or not info_path.is_file():
            raise JudgeError(f"no judge in {directory}: train one with `tessera train judge`")
        info = json.loads(info_path.read_text())
        if info.get("weights_sha256") != _sha256(weights):
            raise JudgeError(
                f"{weights} does not match the accuracy recorded in {info_path}; retrain the judge"
            )
        measured = info.get("accuracy", {})
        low = [
            f"{split} {key} {measured.get(split, {}).get(key, 0.0):.4f}"
            for split in ("test", "heldout")
            for key in GATED
            if measured.get(split, {}).get(key, 0.0) < min_accuracy
        ]
        if low:
            raise JudgeError(
                f"the judge in {directory} is below {min_accuracy:.0%} accuracy ({', '.join(low)}); "
                "it refuses to judge"
            )
        net = JudgeNet(
            JudgeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()})
        )
        net.load_state_dict(load_file(weights))
        return cls(net, info)

    def predict(self, images: np.ndarray, batch_size: int = 250) -> Predictions:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if len(images) == 0:
            raise BadInputError("no images to judge")
        return Predictions(**_run(self.net, images, batch_size))

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images).features
