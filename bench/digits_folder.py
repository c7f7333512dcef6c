"""A real captioned folder and a judge for it (docs/training.md, "Train on your own images").

    python bench/digits_folder.py make DIR         # needs scikit-learn (its wheel ships the data)
    tessera train recipe folder DIR --out RUN --budget-hours 1
    python bench/digits_folder.py judge RUN [--json]

The folder: the 1,797 handwritten digits scikit-learn ships (8 x 8 scans, UCI), black ink on white,
each with a caption from five templates naming the digit ("a scanned digit: seven", "seven", ...),
so captions repeat. The judge is a classifier built from the real training images alone (5-nearest
neighbours on 16 x 16 grey pixels of RUN/data/train, labels read from the captions), never from
generated ones; it scores the held-out part: the real images (its ceiling), images generated from
their captions, the model's captions (the digit named), and which subject the retrieved documents
show for a prompt under the training and the inference selection rules.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a handwritten digit {}", "the number {}, written by hand", "{}", "a scanned digit: {}",
             "a picture of the numeral {}"]


def make(out: Path) -> int:
    from sklearn.datasets import load_digits

    out.mkdir(parents=True, exist_ok=True)
    digits, rng, rows = load_digits(), np.random.default_rng(0), []
    for i, (img, y) in enumerate(zip(digits.images, digits.target, strict=True)):
        Image.fromarray((255 - img * 255 / 16).round().astype(np.uint8), "L").save(out / f"{i:04d}.png")
        rows.append({"file_name": f"{i:04d}.png", "text": TEMPLATES[rng.integers(5)].format(NAMES[y])})
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def label(text: str) -> int:
    """The digit a caption names (-1 if none)."""
    words = text.lower().replace(",", " ").replace(":", " ").split()
    return next((NAMES.index(w) for w in words if w in NAMES), -1)


def features(images: np.ndarray) -> np.ndarray:
    grey = images.astype(np.float32).mean(-1)
    n, h, w = grey.shape
    small = grey.reshape(n, 16, h // 16, 16, w // 16).mean((2, 4)).reshape(n, -1)
    small -= small.mean(1, keepdims=True)
    return small / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-6)


class Judge:
    def __init__(self, images: np.ndarray, labels: np.ndarray, k: int = 5) -> None:
        self.x, self.y, self.k = features(images), labels, k

    def __call__(self, images: np.ndarray) -> np.ndarray:
        near = np.argsort(-(features(images) @ self.x.T), axis=1)[:, : self.k]
        return np.array([np.bincount(self.y[row], minlength=10).argmax() for row in near])


def judge(run: Path, seed: int = 0) -> dict:
    from engine.engine import Engine
    from engine.memory import retrieve
    from engine.retriever import document_embeddings
    from training.data.folder import FolderDataset

    engine = Engine.load(run / "bundle", device="cpu")
    size = engine.image_tokenizer.image_size

    def load(part: str) -> tuple[np.ndarray, list[str]]:
        ds = FolderDataset(run / "data" / part, size=size)
        items = [ds.load(i) for i in range(len(ds)) if ds.items[i][1]]
        return np.stack([im for im, _ in items]), [t for _, t in items]

    train, train_texts = load("train")
    real, texts = load("heldout")
    truth = np.array([label(t) for t in texts])
    classify = Judge(train, np.array([label(t) for t in train_texts]))
    t0 = time.time()
    generated = np.stack([engine.generate(t, n=1, seed=seed + i, retrieve=0).result().candidates[0].image
                          for i, t in enumerate(texts)])
    gen_s = (time.time() - t0) / len(texts)
    said = [engine.caption(im, retrieve=0).result().candidates[0].text or "" for im in real]
    bank = engine.bank
    subject = np.array([label(t) for t in bank.table.texts])
    prompts = [TEMPLATES[j].format(NAMES[d]) for d in range(10) for j in range(5)]
    query = document_embeddings(engine.retriever, prompts, [None] * len(prompts))
    want = np.repeat(np.arange(10), 5)

    def retrieved_right(rules) -> float:
        hits = retrieve([("bundle", bank)], query, 2, rules=rules)
        return float(np.mean([subject[d] == w for row, w in zip(hits, want, strict=True) for _, d, _ in row]))

    return {
        "held_out": len(texts),
        "classifier_on_real_held_out": round(float(np.mean(classify(real) == truth)), 4),
        "t2i_judged_right": round(float(np.mean(classify(generated) == truth)), 4),
        "t2i_seconds_per_image": round(gen_s, 2),
        "caption_names_the_digit": round(float(np.mean(np.array([label(s) for s in said]) == truth)), 4),
        "caption_exact": round(float(np.mean([s.strip() == t for s, t in zip(said, texts, strict=True)])), 4),
        "retrieval_right_subject": {"training_rules": round(retrieved_right(bank.rules), 4),
                                    "inference_rules": round(retrieved_right(bank.inference_rules), 4)},
        "chance": 0.1,
        "examples": [{"caption": t, "model_caption": s} for t, s in list(zip(texts, said, strict=True))[:5]],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("make").add_argument("dir", type=Path)
    j = sub.add_parser("judge")
    j.add_argument("run", type=Path)
    j.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.cmd == "make":
        print(f"{make(args.dir)} images in {args.dir}", file=sys.stderr)
        return 0
    result = judge(args.run)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
