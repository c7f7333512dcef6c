"""`tessera train recipe folder DIR --out RUN [--budget-hours H]`: train on your own images.

    split (a disjoint held-out part) -> image tokenizer -> text tokenizer -> retriever -> memory bank
    -> multi-task training from scratch (text->image, captioning, caption infilling, image infilling)
    -> runtime-only export (the run's own tokenizers, checked by hash) -> held-out report

The shapes recipe's design (training/recipe.py): no retrieval-augmented pretraining stage, the
multi-task model is trained from scratch with the loss on each document's output, documents kept
apart in packed rows and grid-cell embeddings (recipes/shapes-sft.toml is the template). Sizes come
from the folder's size and the budget (`plan`) and are printed before anything runs; they are kept
in RUN/plan.json, so a rerun resumes the same plan stage by stage.

The split: every image is identified by the sha256 of its file; the captioned images whose hashes
sort first (5 %, whole groups of identical files) are held out. RUN/data/train and RUN/data/heldout
hold links to the images (copies where links are not possible) and their captions as sidecar .txt
files, so every stage reads an ordinary folder dataset and no held-out image is trained on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.errors import BadInputError
from engine.io import atomic_write_text

HELD_OUT = 0.05
# What a stage costs on this machine (2 cores; docs/training.md, "Train on your own images").
TRANSFORMER_FLOPS = 60e9  # achieved training FLOP/s (the shapes-preset run: 72 GF/s median)
TOKENIZER_STEP_S = 0.18  # VQ at 64 px, batch 16 (the shipped tokenizer: 3,500 steps in 629 s)
RETRIEVER_STEP_S = 1.8  # bi-encoder, batch 192 (the shipped retriever: 1,200 steps in 2,117 s)
SHARES = {"tokenizer": 0.12, "retriever": 0.08, "transformer": 0.72}  # of the budget; the rest: the others
SMALL = {"n_layer": 4, "n_head": 3, "d_model": 192}  # the shapes preset, narrower, below SMALL_BELOW images
SMALL_BELOW = 5000
REPORT_IMAGES = 100  # held-out images the report generates from and captions


@dataclass(frozen=True)
class FolderPlan:
    budget_hours: float
    train_images: int
    held_out: int
    codebook: int
    grid: tuple[int, int]
    tokenizer_steps: int
    retriever_steps: int
    retriever_batch: int
    model: dict  # the [model] section of the multi-task recipe
    params: int
    tokens_per_step: int
    steps: int
    seconds: dict  # expected seconds per stage

    def describe(self) -> str:
        m = self.model
        layers = f"{m.get('n_layer', 6)} layers x {m.get('d_model', 256)}"
        total = sum(self.seconds.values())
        lines = [
            f"{self.train_images} training images, {self.held_out} held out; budget {self.budget_hours:g} h",
            f"  image tokenizer   {self.codebook} codes on a {self.grid[0]}x{self.grid[1]} grid, "
            f"{self.tokenizer_steps} steps (~{self.seconds['tokenizer'] / 60:.0f} min)",
            "  text tokenizer    BPE on the training captions (seconds)",
            f"  retriever         {self.retriever_steps} steps of {self.retriever_batch} pairs "
            f"(~{self.seconds['retriever'] / 60:.0f} min)",
            f"  memory bank       {self.train_images} documents",
            f"  multi-task model  {layers} ({self.params / 1e6:.1f} M params), {self.steps} steps x "
            f"{self.tokens_per_step} positions = {self.steps * self.tokens_per_step / 1e6:.1f} M "
            f"(~{self.seconds['transformer'] / 60:.0f} min)",
            f"  export, report    runtime-only bundle; generation and captioning on {REPORT_IMAGES} held-out",
            f"  expected          ~{total / 60:.0f} min on an idle 2-core machine",
        ]
        return "\n".join(lines)


def plan(train_images: int, held_out: int, budget_hours: float, template: dict) -> FolderPlan:
    """Sizes for a folder of `train_images` captioned training images and a budget in hours."""
    from engine.nn.transformer import get_preset, model_info
    from engine.nn.vqvae import VQConfig

    if budget_hours <= 0:
        raise BadInputError(f"--budget-hours must be positive, not {budget_hours}")
    budget = budget_hours * 3600
    # about 256 uses of each code per epoch: a big codebook on a small folder spreads one colour
    # (a white background) over many codes, which the transformer then has to tell apart
    codebook = int(min(1024, max(64, 2 ** math.floor(math.log2(train_images * 64 / 256)))))
    grid = VQConfig(codebook_size=codebook).grid
    tokenizer_steps = int(min(5000, max(200, SHARES["tokenizer"] * budget / TOKENIZER_STEP_S)))
    batch = min(192, train_images)
    retriever_steps = int(min(1200, max(50, SHARES["retriever"] * budget / (RETRIEVER_STEP_S * batch / 192))))
    model = {**(SMALL if train_images < SMALL_BELOW else {}), "grid_rows": grid[0], "grid_cols": grid[1]}
    b = template["batch"]
    tokens_per_step = b["micro_batch"] * b["grad_accum"] * b["seq_len"]
    vocab = 1536 + codebook + 27  # at most: the text tokenizer's vocabulary, the codes, the specials
    info = model_info(get_preset(template["model"].get("preset", "shapes"), vocab_size=vocab, **model),
                      seq_len=b["seq_len"])
    step_s = info["flops_per_token"] * tokens_per_step / TRANSFORMER_FLOPS
    steps = int(max(20, SHARES["transformer"] * budget / step_s))
    seconds = {"tokenizer": tokenizer_steps * TOKENIZER_STEP_S,
               "retriever": retriever_steps * RETRIEVER_STEP_S * batch / 192, "transformer": steps * step_s,
               "other": 120.0}
    return FolderPlan(budget_hours, train_images, held_out, codebook, (grid[0], grid[1]), tokenizer_steps,
                      retriever_steps, batch, model, info["params"],
                      tokens_per_step, steps, {k: round(v) for k, v in seconds.items()})


# -- the held-out split -----------------------------------------------------------------------------
def split_folder(src: str | Path, data: Path, held_out: float = HELD_OUT) -> dict:
    """Write data/train and data/heldout (see the module docstring) and data/split.json; an existing
    split is kept. Returns split.json's content."""
    from training.data.folder import FolderDataset

    if (data / "split.json").is_file():
        return json.loads((data / "split.json").read_text())
    ds = FolderDataset(src)
    for line in ds.report["skipped"]:  # type: ignore[attr-defined]  # a list of {"file", "reason"}
        print(f"skipped {line['file']}: {line['reason']}", file=sys.stderr)
    digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path, _ in ds.items]
    captioned = sorted({d for d, (_, text) in zip(digests, ds.items, strict=True) if text.strip()})
    n_captioned = sum(1 for _, text in ds.items if text.strip())
    if n_captioned < 20:
        raise BadInputError(f"{src}: {n_captioned} captioned images; the folder recipe needs at least 20")
    want = max(1, round(held_out * n_captioned))
    counts: dict[str, int] = {}
    for d in digests:
        counts[d] = counts.get(d, 0) + 1
    held: set[str] = set()
    for d in captioned:
        if sum(counts[h] for h in held) >= want:
            break
        held.add(d)
    stage = data.with_name(data.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    sizes = {"train": 0, "heldout": 0}
    for i, ((path, text), d) in enumerate(zip(ds.items, digests, strict=True)):
        part = "heldout" if d in held and text.strip() else "train"
        dst = stage / part / f"{i:06d}{path.suffix.lower()}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(path.resolve(), dst)
        except OSError:  # no links here (some file systems): a copy
            shutil.copyfile(path, dst)
        if text.strip():
            dst.with_suffix(".txt").write_text(text, encoding="utf-8")
        sizes[part] += 1
    info = {"source": str(Path(src).resolve()), **sizes, "captioned": n_captioned,
            "held_out_rule": f"captioned images whose sha256 sorts first, {held_out:.0%}"}
    atomic_write_text(stage / "split.json", json.dumps(info, indent=2))
    shutil.rmtree(data, ignore_errors=True)
    stage.rename(data)
    return info


# -- the stages -------------------------------------------------------------------------------------
def folder_stages(src: str, out: Path, budget_hours: float, save_plan: bool = True) -> list:
    """Split the folder, plan (or reload RUN/plan.json), print the plan; the stages to run."""
    from training.recipe import RECIPES_DIR, Stage, tomllib, write_recipe

    split = split_folder(src, out / "data")
    train, heldout = out / "data" / "train", out / "data" / "heldout"
    template = tomllib.loads((RECIPES_DIR / "shapes-sft.toml").read_text())
    plan_path = out / "plan.json"
    if plan_path.is_file():
        saved = json.loads(plan_path.read_text())
        p = FolderPlan(**{**saved, "grid": tuple(saved["grid"])})
        print(f"[recipe] resuming the plan in {plan_path} (budget {p.budget_hours:g} h)", file=sys.stderr)
    else:
        train_captioned = split["captioned"] - split["heldout"]
        p = plan(train_captioned, split["heldout"], budget_hours, template)
        if save_plan:
            atomic_write_text(plan_path, json.dumps(asdict(p), indent=2))
    print(f"[recipe] folder {src}: {p.describe()}", file=sys.stderr)
    vq, text, retriever, memory = (out / "vq", out / "text" / "tokenizer.json", out / "retriever",
                                   out / "memory")
    steps = p.steps
    from training.data.sft_source import FOLDER_WEIGHTS

    sft_cfg = write_recipe(RECIPES_DIR / "shapes-sft.toml", out / "sft.toml", {
        "model": p.model,
        "optim": {"warmup": min(template["optim"]["warmup"], max(1, steps // 10))},
        "run": {"steps": steps, "out_dir": str(out / "sft"), "threads": 2, "eval_every": max(1, steps // 10),
                "ckpt_every": max(10, steps // 20)},
        "data": {"folder": str(train), "val_folder": str(heldout), "image_tokenizer": str(vq),
                 "text_tokenizer": str(text), "weights": FOLDER_WEIGHTS},
    })
    name = f"folder-{Path(split['source']).name}"
    return [
        Stage("image tokenizer", ["train", "tokenizer", "--data", str(train), "--out", str(vq), "--steps",
                                  str(p.tokenizer_steps), "--codebook-size", str(p.codebook), "--resume"],
              vq / "config.json"),
        Stage("text tokenizer", ["train", "text-tokenizer", "--data", str(train), "--out", str(text)], text),
        Stage("retriever", ["train", "retriever", "--data", str(train), "--out", str(retriever), "--steps",
                            str(p.retriever_steps), "--batch-size", str(p.retriever_batch), "--resume"],
              retriever / "config.json"),
        Stage("memory bank", ["index", "build", "--data", str(train), "--out", str(memory), "--docs",
                              str(split["train"]), "--retriever", str(retriever), "--image-tokenizer",
                              str(vq), "--storage", "fp16"],
              memory / "params.json"),
        Stage("multi-task training", ["train", "sft", "--config", str(sft_cfg), "--resume"],
              out / "sft" / "model.safetensors"),
        # the tokenizers come from the run's record (by hash), the retriever and bank are checked too
        Stage("export", ["export", str(out / "sft"), "--out", str(out / "bundle"), "--retriever",
                         str(retriever), "--memory", str(memory), "--force", "--runtime-only", "--no-int8",
                         "--name", name],
              out / "bundle" / "manifest.json"),
    ]


# -- the held-out report ----------------------------------------------------------------------------
def report(out: Path, n: int = REPORT_IMAGES, seed: int = 0) -> dict:
    """Held-out figures, judged by the run's retriever (trained on the real training images only).
    The held-out images' distinct captions are the classes.

    t2i: an image generated from a held-out caption is right when, of all the classes, it scores
    highest with that caption. caption: the model's caption of a held-out image is right when the
    held-out image it scores highest with has the same caption as the captioned one (and `exact`
    when it is that caption). Each comes with the same judge on the real thing (`real`: its ceiling
    on this folder, where captions that differ only in wording are hard to tell apart) and chance."""
    from engine.engine import Engine
    from training.data.folder import FolderDataset

    engine = Engine.load(out / "bundle", device="cpu")
    ds = FolderDataset(out / "data" / "heldout", size=engine.image_tokenizer.image_size)
    items = [ds.load(i) for i in range(min(n, len(ds)))]
    real, truths = np.stack([im for im, _ in items]), [t for _, t in items]
    captions = sorted(set(truths))
    label = np.array([captions.index(t) for t in truths])
    embed_texts, embed_images = engine.retriever.embed_texts, engine.retriever.embed_images
    caption_vecs, real_vecs = embed_texts(captions), embed_images(real)

    def t2i_right(images: np.ndarray) -> float:
        return float(np.mean(np.argmax(embed_images(images) @ caption_vecs.T, axis=1) == label))

    def caption_right(texts: list[str]) -> float:
        nearest = np.argmax(embed_texts([t if t.strip() else "?" for t in texts]) @ real_vecs.T, axis=1)
        return float(np.mean(label[nearest] == label))

    t0 = time.time()
    generated = np.stack([_first_image(engine.generate(t, n=1, seed=seed + i, retrieve=0))
                          for i, t in enumerate(truths)])
    gen_s = time.time() - t0
    said = [engine.caption(im, retrieve=0).result().candidates[0].text or "" for im in real]
    result = {
        "held_out_images": len(items), "classes": len(captions), "chance": round(1 / len(captions), 4),
        "t2i": {"right": round(t2i_right(generated), 4), "real": round(t2i_right(real), 4),
                "seconds_per_image": round(gen_s / len(items), 2)},
        "caption": {"right": round(caption_right(said), 4), "real": round(caption_right(truths), 4),
                    "exact": round(float(np.mean([a.strip() == b.strip() for a, b in zip(said, truths,
                                                                                       strict=True)])), 4)},
        "examples": [{"caption": t, "model_caption": s} for t, s in list(zip(truths, said, strict=True))[:5]],
    }
    atomic_write_text(out / "report.json", json.dumps(result, indent=2))
    return result


def _first_image(job) -> np.ndarray:
    image = job.result().candidates[0].image
    assert image is not None  # an image task's candidates are images
    return image
