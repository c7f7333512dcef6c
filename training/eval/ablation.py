"""CM3Leon's decoding ablation (§3.1, Fig. 4) on Shapes World, for `tessera eval model --suite full`:
decoding strategy (top-p / CFG / CD-K / ½ top-p + ½ CD-K), CFG scale 1-7, and candidates 1/2/4/8
re-ranked by the retriever. Each row: compositional accuracy and FID (judge features) on the same
test prompts. Writes docs/eval/<model_id>.md and PNG plots drawn with PIL (no plotting dependency).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.io import atomic_write, atomic_write_text
from training.eval.fid import fid
from training.eval.judge import Judge
from training.eval.suite import Decoding, EngineTasks, compositional, compositional_scenes

CFG_SCALES = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
CANDIDATES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Setting:
    name: str
    short: str  # plot label
    decoding: Decoding
    pure_cdk: bool = False  # CD-K at every step (see cdk_only)

    def describe(self) -> str:
        d = self.decoding
        if self.pure_cdk:
            parts = [f"CD-K every step (alpha {d.cdk_alpha:g}, k {d.cdk_k})"]
        else:
            parts = [
                "no CFG" if d.cfg is None else f"CFG {d.cfg:g}",
                f"temperature {d.temperature:g}",
                f"top-p {d.top_p:g}",
            ]
            if d.cdk_alpha is not None:
                parts.append(f"half the steps CD-K (alpha {d.cdk_alpha:g}, k {d.cdk_k})")
        return ", ".join([*parts, f"{d.n} candidate(s) re-ranked", f"{d.retrieve} retrieved"])


@dataclass
class Row:
    setting: Setting
    compositional_acc: float
    fid: float
    seconds: float


def cdk_only(engine, prompt: str, seed: int, d: Decoding) -> np.ndarray:
    """Pure CD-K at every step. Engine.generate mixes CD-K half-and-half with CFG + top-p (the
    paper's best setting), so the pure form is built here from the engine's own parts."""
    from engine import instructions
    from engine.formats import unconditional_image_prompt
    from engine.jobs import Job
    from engine.sampling import ContrastiveTopK, Multinomial, Sampler
    from engine.tasks import Request, Retrieval, run

    engine._require("generate")
    text = " ".join(prompt.split())
    cond = instructions.prompt("t2i", engine.vocab, engine.text_tokenizer, text=text)
    sampler = Sampler([ContrastiveTopK(d.cdk_alpha, d.cdk_k)], Multinomial(seed))
    request = Request(
        "generate",
        "image",
        cond,
        unconditional_image_prompt(engine.vocab),
        sampler,
        {"seed": seed, "cdk_alpha": d.cdk_alpha, "cdk_k": d.cdk_k},
        n=d.n,
        retrieval=Retrieval(d.retrieve, text=text),
        rerank_text=text,
    )
    return Job(run(engine, request), "generate").result().candidates[0].image


def settings(cdk_alpha: float, cdk_k: int) -> dict[str, list[Setting]]:
    """The three comparisons: strategy, CFG scale, candidates."""
    base = Decoding()
    cdk = replace(base, cdk_alpha=cdk_alpha, cdk_k=cdk_k)
    return {
        "decoding": [
            Setting("top-p (no CFG)", "top-p", replace(base, cfg=None)),
            Setting("CFG + top-p", "CFG", base),
            Setting("CD-K", "CD-K", cdk, pure_cdk=True),
            Setting("½ (CFG + top-p) + ½ CD-K", "top-p/CD-K mix", cdk),
        ],
        "cfg": [Setting(f"CFG {s:g}", f"{s:g}", replace(base, cfg=s)) for s in CFG_SCALES],
        "candidates": [
            Setting(f"{k} candidate{'s' if k > 1 else ''}", str(k), replace(base, n=k)) for k in CANDIDATES
        ],
    }


def run_ablation(
    engine,
    judge: Judge,
    n: int,
    seed: int = 0,
    cdk_alpha: float = 0.1,
    cdk_k: int = 10,
    log: Callable[[str], None] = lambda _: None,
) -> dict:
    """{"decoding" | "cfg" | "candidates": [Row, ...], "floor": FID of real test vs real val images}."""
    size = int(engine.image_tokenizer.image_size)
    samples = compositional_scenes("test", n, size, seed)
    reference = judge.features(np.stack([s.image for s in compositional_scenes("val", n, size, seed)]))

    def row(setting: Setting) -> Row:
        t0 = time.perf_counter()
        d = setting.decoding
        if setting.pure_cdk:
            generate = lambda prompt, s: cdk_only(engine, prompt, s, d)  # noqa: E731
        else:
            generate = EngineTasks(engine, d, seed).generate
        r = compositional(generate, judge, samples, seed)
        out = Row(setting, r["acc"], fid(r["pred"].features, reference), round(time.perf_counter() - t0, 1))
        log(f"  {setting.name}: accuracy {out.compositional_acc:.3f}, FID {out.fid:.3f} ({out.seconds}s)")
        return out

    tables: dict = {}
    for key, group in settings(cdk_alpha, cdk_k).items():
        log(f"ablation: {key}")
        tables[key] = [row(s) for s in group]
    tables["floor"] = fid(judge.features(np.stack([s.image for s in samples])), reference)
    return tables


# ---- plots -----------------------------------------------------------------------------------------
def _font(size: int = 13):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def plot(
    path: Path,
    title: str,
    labels: Sequence[str],
    panels: Sequence[tuple[str, Sequence[float]]],
    bars: bool = False,
    floor: float | None = None,
) -> None:
    """Side-by-side panels sharing one x axis (categorical labels): bars or a line with markers.
    `floor` draws a dashed reference line in the FID panel."""
    pw, ph, pad, left, bottom = 380, 260, 16, 56, 64
    img = Image.new("RGB", (len(panels) * (pw + pad) + pad, ph + 40), "white")
    draw, font = ImageDraw.Draw(img), _font()
    draw.text((pad, 8), title, fill="black", font=_font(15))
    for p, (ylabel, values) in enumerate(panels):
        x0, y0 = pad + p * (pw + pad) + left, 36
        w, h = pw - left, ph - bottom
        vals = np.asarray(values, float)
        extra = [floor] if floor is not None and "FID" in ylabel else []
        accuracy = "accuracy" in ylabel
        top = 1.0 if accuracy else max([*vals[np.isfinite(vals)], *extra, 1e-9]) * 1.15
        draw.rectangle((x0, y0, x0 + w, y0 + h), outline="black")
        for t in np.linspace(0, top, 5):
            y = y0 + h - t / top * h
            draw.line((x0 - 4, y, x0, y), fill="black")
            draw.text((x0 - left + 4, y - 7), f"{t:.2f}" if accuracy else f"{t:.3g}", fill="black", font=font)
        draw.text((x0, y0 + h + 40), ylabel, fill="black", font=font)
        step = w / len(labels)
        points = []
        for i, (label, v) in enumerate(zip(labels, vals, strict=True)):
            cx = x0 + step * (i + 0.5)
            draw.text(
                (cx - draw.textlength(label, font=font) / 2, y0 + h + 6 + 14 * (i % 2)),
                label,
                fill="black",
                font=font,
            )
            if not np.isfinite(v):
                continue
            y = y0 + h - v / top * h
            if bars:
                draw.rectangle((cx - step * 0.3, y, cx + step * 0.3, y0 + h), fill=(70, 110, 200))
            else:
                draw.ellipse((cx - 4, y - 4, cx + 4, y + 4), fill=(70, 110, 200))
                points.append((cx, y))
        if len(points) > 1:
            draw.line(points, fill=(70, 110, 200), width=2)
        for f in extra:
            y = y0 + h - f / top * h
            for xs in range(int(x0), int(x0 + w), 12):
                draw.line((xs, y, xs + 6, y), fill=(200, 60, 60), width=2)
            draw.text((x0 + w - 70, y - 16), "floor", fill=(200, 60, 60), font=font)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


# ---- the report -------------------------------------------------------------------------------------
TARGETS = {
    "compositional_acc": ">= 0.80",
    "caption_exact": ">= 0.90",
    "vqa_acc": ">= 0.90",
    "seg_miou": ">= 0.85",
    "infill_acc": ">= 0.85",
    "infill_outside_unchanged": "1.0",
    "edit_success": ">= 0.80",
    "fid": "<= 3 x fid_floor",
}


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def _table(rows: list[Row]) -> list[str]:
    out = ["| setting | compositional acc | FID | seconds | decoding |", "|---|---|---|---|---|"]
    out += [
        f"| {r.setting.name} | {_fmt(r.compositional_acc)} | {_fmt(r.fid)} | {r.seconds} | "
        f"{r.setting.describe()} |"
        for r in rows
    ]
    return out


SECTIONS = (
    ("decoding", "Strategy", True),
    ("cfg", "CFG scale", False),
    ("candidates", "Candidates, re-ranked by the retriever's text-image score", False),
)


def _ablation_lines(directory: Path, model_id: str, tables: dict, n: int) -> list[str]:
    figures = directory / model_id
    figures.mkdir(parents=True, exist_ok=True)
    floor = tables["floor"]
    lines = [
        f"## Decoding ablation (CM3Leon §3.1), {n} test prompts of 1-2 objects",
        "",
        f"FID floor (the real images of these prompts vs as many real val images): {floor:.3f}.",
    ]
    for key, title, bars in SECTIONS:
        rows = tables[key]
        panels = [
            ("compositional accuracy", [r.compositional_acc for r in rows]),
            ("FID (judge features)", [r.fid for r in rows]),
        ]
        plot(
            figures / f"{key}.png",
            f"{title} ({n} prompts)",
            [r.setting.short for r in rows],
            panels,
            bars=bars,
            floor=floor,
        )
        lines += ["", f"### {title}", "", *_table(rows), "", f"![{key}]({model_id}/{key}.png)"]
    return lines


def write_report(directory: str | Path, results: dict, tables: dict | None, n_ablation: int) -> Path:
    """docs/eval/<model_id>.md (plus <model_id>/*.png beside it when the ablation ran)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model_id = results["model_id"]
    notes, details = results.get("notes", {}), results.get("details", {})
    shown = (*TARGETS, "heldout_compositional_acc", "grounding_iou", "fid_floor")
    lines = [
        f"# Evaluation: {model_id}",
        "",
        f"Full suite, {results['n']} items per metric, seed {results['seed']}. Generated images are read "
        "by the judge (training/eval/judge.py), a CNN trained on rendered Shapes World ground truth only; "
        "its accuracy on real images:",
        "",
        "| split | kind | colour | size | whole scene |",
        "|---|---|---|---|---|",
        *[
            f"| {split} | {a['kind']:.4f} | {a['color']:.4f} | {a['size']:.4f} | {a['exact']:.4f} |"
            for split, a in results["judge"].items()
        ],
        "",
        "## Metrics",
        "",
        "| metric | value | target | note |",
        "|---|---|---|---|",
        *[
            f"| {m} | {_fmt(results.get(m))} | {TARGETS.get(m, '')} | {notes.get(m, '')} |"
            for m in results
            if m in shown
        ],
        "",
        "Tokenizer ceiling (the bundle's VQ round trip of the real test images, judged the same way): "
        f"compositional {_fmt(details.get('tokenizer_ceiling_compositional_acc'))}, "
        f"FID {_fmt(details.get('tokenizer_ceiling_fid'))}.",
        "",
    ]
    if tables is None:
        lines += ["## Decoding ablation", "", notes.get("ablation", "not run"), ""]
    else:
        lines += [*_ablation_lines(directory, model_id, tables, n_ablation), ""]
    path = directory / f"{model_id}.md"
    atomic_write_text(path, "\n".join(lines))
    return path
