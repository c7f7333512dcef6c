"""Crash-safe checkpoints: tensors in safetensors, everything else in JSON, never pickle.

    OUT/checkpoints/step-000100/model.safetensors    model weights (full, unsharded)
                               trainer.safetensors  optimizer tensors ("<param fqn>::<key>") + torch RNG
                               state.json           step, optimizer param groups and scalars, config, extras
    OUT/checkpoints/latest.json                      {"step": 100, "dir": "step-000100"}, written last
    OUT/model.safetensors + OUT/config.json          the final export (model config + run summary)

Every file is written with engine.io.atomic_write (temp file, fsync, rename), and latest.json only moves
to a step once all of its files exist, so a run killed at any moment resumes from a complete checkpoint.
State dicts are full (not sharded): a run can resume on a different number of ranks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.errors import BadInputError
from engine.io import atomic_write, atomic_write_text

SEP = "::"


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def flatten_optimizer(optim_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict (parameter keys = FQN strings) into tensors and JSON scalars."""
    tensors, scalars = {}, {}
    for param, state in optim_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param}{SEP}{key}"] = value
            else:
                scalars[f"{param}{SEP}{key}"] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in optim_state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {}
    for flat, value in [*tensors.items(), *meta["scalars"].items()]:
        param, key = flat.rsplit(SEP, 1)
        state.setdefault(param, {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    out_dir: str | Path, step: int, model_state: dict, optim_state: dict, info: dict, keep: int = 2
) -> Path:
    root = Path(out_dir) / "checkpoints"
    name = f"step-{step:06d}"
    folder = root / name
    optim_tensors, optim_meta = flatten_optimizer(optim_state)
    _save_tensors(folder / "model.safetensors", model_state)
    _save_tensors(folder / "trainer.safetensors", {**optim_tensors, "rng::torch": torch.get_rng_state()})
    atomic_write_text(
        folder / "state.json", json.dumps({"step": step, "optimizer": optim_meta, **info}, indent=1)
    )
    atomic_write_text(root / "latest.json", json.dumps({"step": step, "dir": name}))
    older = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != name)
    for old in older[: max(0, len(older) - keep + 1)]:  # keep `keep` checkpoints, this one included
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    pointer = Path(out_dir) / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    return pointer.parent / json.loads(pointer.read_text())["dir"]


def load_checkpoint(folder: str | Path) -> tuple[dict, dict, dict]:
    """-> (model_state, optim_state, state_json); also restores torch's RNG."""
    folder = Path(folder)
    state = json.loads((folder / "state.json").read_text())
    trainer = load_file(folder / "trainer.safetensors")
    torch.set_rng_state(trainer.pop("rng::torch"))
    return (
        load_file(folder / "model.safetensors"),
        unflatten_optimizer(trainer, state.pop("optimizer")),
        state,
    )


def export_model(out_dir: str | Path, model_state: dict, config: dict) -> None:
    """The final model: OUT/model.safetensors and OUT/config.json (config["model"] = ModelConfig fields)."""
    out_dir = Path(out_dir)
    _save_tensors(out_dir / "model.safetensors", model_state)
    atomic_write_text(out_dir / "config.json", json.dumps(config, indent=1))


def load_model_source(path: str | Path) -> tuple[dict, dict]:
    """Weights and model config from an exported run folder, a checkpoint folder or a run with checkpoints.
    -> (state_dict, model_config_dict). Used by init_from (SFT starts from a pretrained model)."""
    path = Path(path)
    candidates = [path, latest_checkpoint(path)]
    for folder in filter(None, candidates):
        weights = folder / "model.safetensors"
        config = folder / ("config.json" if (folder / "config.json").exists() else "state.json")
        if weights.exists() and config.exists():
            model_config = json.loads(config.read_text()).get("model")
            if model_config is None:
                raise BadInputError(f"{config} has no 'model' section")
            return load_file(weights), model_config
    raise BadInputError(
        f"no model found at {path} (expected model.safetensors with config.json or a checkpoint)"
    )
