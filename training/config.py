"""Training configuration: dataclasses read from a TOML recipe (no exec, no pickle).

    [model]  preset = "shapes", init_from = "runs/pretrain" (optional), any ModelConfig field as override
    [optim]  lr, min_lr, betas, eps, weight_decay, warmup, grad_clip
    [batch]  micro_batch, grad_accum, seq_len       (global batch = micro_batch * grad_accum * world_size)
    [run]    steps, eval_every, eval_batches, ckpt_every, keep_ckpts, seed, out_dir, threads, deterministic
    [data]   kind = "synthetic" | "shapes-ra" | ..., every other key is passed to that source's factory

Relative paths are relative to the working directory, as on the command line.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import BadInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ModelSection:
    preset: str = "shapes"
    init_from: str | None = None  # a run's out_dir (its model.safetensors/config.json) or checkpoint folder
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimSection:
    lr: float = 1e-3
    min_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # 2-D parameters only
    warmup: int = 100  # linear warmup steps, then cosine to min_lr at run.steps
    grad_clip: float = 1.0  # max global grad norm; <= 0 disables clipping

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)


@dataclass
class BatchSection:
    micro_batch: int = 8
    grad_accum: int = 1
    seq_len: int = 512


@dataclass
class RunSection:
    steps: int = 1000
    eval_every: int = 100  # 0 = never
    eval_batches: int = 8
    ckpt_every: int = 100  # 0 = only the final export
    keep_ckpts: int = 2
    seed: int = 0
    out_dir: str = "runs/pretrain"
    threads: int = 0  # torch.set_num_threads; 0 leaves the default
    deterministic: bool = True  # torch.use_deterministic_algorithms: bitwise resume on CPU


@dataclass
class DataSection:
    kind: str = "synthetic"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    batch: BatchSection = field(default_factory=BatchSection)
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)

    def __post_init__(self) -> None:
        checks = {
            "batch.micro_batch": self.batch.micro_batch >= 1,
            "batch.grad_accum": self.batch.grad_accum >= 1,
            "batch.seq_len": self.batch.seq_len >= 2,
            "run.steps": self.run.steps >= 1,
            "run.eval_batches": self.run.eval_batches >= 1,
            "optim.lr": self.optim.lr > 0,
            "optim.warmup": self.optim.warmup >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise BadInputError(f"invalid training config values: {', '.join(bad)}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        sections = {"model", "optim", "batch", "run", "data"}
        unknown = set(d) - sections
        if unknown:
            raise BadInputError(f"unknown config sections {sorted(unknown)}; known: {sorted(sections)}")
        model = dict(d.get("model", {}))
        data = dict(d.get("data", {}))
        return cls(
            model=ModelSection(
                preset=model.pop("preset", "shapes"),
                init_from=model.pop("init_from", None),
                overrides={**model.pop("overrides", {}), **model},
            ),
            optim=_section(OptimSection, d.get("optim", {}), "optim"),
            batch=_section(BatchSection, d.get("batch", {}), "batch"),
            run=_section(RunSection, d.get("run", {}), "run"),
            data=DataSection(kind=data.pop("kind", "synthetic"), params={**data.pop("params", {}), **data}),
        )

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            d = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BadInputError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise BadInputError(f"{path} is not valid TOML: {exc}") from None
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        return d


def _section(cls, values: dict, name: str):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise BadInputError(f"unknown keys in [{name}]: {sorted(unknown)}; known: {sorted(known)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise BadInputError(f"bad [{name}] section: {exc}") from None
