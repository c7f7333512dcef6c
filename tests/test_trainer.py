"""The training loop: overfitting, schedule, config, checkpoints, exact resume after SIGKILL, init_from."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.cli import main
from engine.errors import BadInputError
from training import checkpoint
from training.config import OptimSection, TrainConfig
from training.sources import register_source
from training.trainer import Trainer, lr_at

torch.set_num_threads(1)


class FixedBatch:
    """The same 4 sequences every step, with a sentinel target (weight 0) in each row."""

    seq_len = 24
    vocab_size = 256

    def batch(self, step, micro_step, rank, world_size, batch_size):
        rng = np.random.default_rng(micro_step * world_size + rank)
        rows = rng.integers(20, 256, size=(batch_size, self.seq_len + 1))
        rows[:, 7] = 3  # <mask:0>: predicting it carries no loss
        inputs, targets = rows[:, :-1], rows[:, 1:]
        return inputs, targets, (targets != 3).astype(np.float32)


register_source("test-fixed")(lambda split, seq_len, seed, **params: FixedBatch())


def tiny_config(tmp_path: Path, **sections) -> TrainConfig:
    d = {
        "model": {"preset": "tiny"},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup": 5},
        "batch": {"micro_batch": 2, "grad_accum": 2, "seq_len": 32},
        "run": {
            "steps": 20,
            "eval_every": 10,
            "eval_batches": 2,
            "ckpt_every": 5,
            "threads": 1,
            "out_dir": str(tmp_path / "run"),
        },
        "data": {"kind": "synthetic", "vocab_size": 256},
    }
    for name, values in sections.items():
        d[name] = {**d.get(name, {}), **values}
    return TrainConfig.from_dict(d)


def test_tiny_model_overfits_a_small_batch(tmp_path):
    cfg = tiny_config(
        tmp_path,
        optim={"lr": 1e-2, "min_lr": 1e-2, "warmup": 0, "weight_decay": 0.0},
        batch={"micro_batch": 2, "grad_accum": 2, "seq_len": 24},
        data={"kind": "test-fixed"},
    )
    trainer = Trainer(cfg, parallel_mode="none")
    losses = []
    for step in range(1, 91):
        losses.append(trainer.forward_backward(step))
        trainer.clip_and_update(step)
    assert losses[0] == pytest.approx(math.log(256), abs=1e-3)
    assert losses[-1] < 0.05, losses[-10:]


def test_lr_schedule():
    o = OptimSection(lr=1.0, min_lr=0.1, warmup=10)
    assert lr_at(1, o, 110) == pytest.approx(0.1)
    assert lr_at(10, o, 110) == pytest.approx(1.0)
    assert lr_at(60, o, 110) == pytest.approx(0.55)
    assert lr_at(110, o, 110) == pytest.approx(0.1)
    assert lr_at(500, o, 110) == pytest.approx(0.1)


def test_config_from_toml_and_errors(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(
        '[model]\npreset = "tiny"\nn_layer = 3\n[optim]\nbetas = [0.9, 0.98]\n'
        '[data]\nkind = "synthetic"\nvocab_size = 100\n'
    )
    cfg = TrainConfig.from_toml(path)
    assert cfg.model.overrides == {"n_layer": 3} and cfg.optim.betas == (0.9, 0.98)
    assert cfg.data.params == {"vocab_size": 100}
    path.write_text("[optim]\nlearning_rate = 1.0\n")
    with pytest.raises(BadInputError, match="unknown keys in \\[optim\\]"):
        TrainConfig.from_toml(path)
    path.write_text("[batch\n")
    with pytest.raises(BadInputError, match="not valid TOML"):
        TrainConfig.from_toml(path)
    with pytest.raises(BadInputError, match="unknown data kind"):
        Trainer(tiny_config(tmp_path, data={"kind": "nope"}))
    with pytest.raises(BadInputError, match="max_seq_len"):
        Trainer(tiny_config(tmp_path, batch={"seq_len": 4096}))


def test_checkpoint_roundtrip_and_keep(tmp_path):
    cfg = tiny_config(tmp_path, run={"steps": 12, "ckpt_every": 3, "keep_ckpts": 2, "eval_every": 0})
    trainer = Trainer(cfg, parallel_mode="none")
    trainer.train()
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-000009", "step-000012"]
    assert checkpoint.latest_checkpoint(tmp_path / "run") == root / "step-000012"
    model_state, optim_state, state = checkpoint.load_checkpoint(root / "step-000012")
    assert state["step"] == 12 and state["model"] == trainer.model_config.to_dict()
    live = trainer.optimizer.state_dict()
    for name, p in trainer.model.named_parameters():
        assert torch.equal(model_state[name], p.detach())
        idx = live["param_groups"][0]["params"][list(dict(trainer.model.named_parameters())).index(name)]
        assert torch.equal(optim_state["state"][name]["exp_avg_sq"], live["state"][idx]["exp_avg_sq"])
    assert not any(p.suffix == ".tmp" for p in root.rglob("*")), "no temp files left behind"
    exported = load_file(tmp_path / "run" / "model.safetensors")
    assert torch.equal(exported["lm_head.weight"], model_state["lm_head.weight"])
    # a finished run is not silently overwritten
    with pytest.raises(BadInputError, match="--resume"):
        Trainer(cfg, parallel_mode="none").train()


def test_init_from_a_previous_run(tmp_path):
    first = tiny_config(tmp_path, run={"steps": 3, "eval_every": 0, "ckpt_every": 0})
    Trainer(first, parallel_mode="none").train()
    second = tiny_config(
        tmp_path,
        model={"preset": "shapes", "init_from": str(tmp_path / "run")},
        run={"out_dir": str(tmp_path / "sft"), "steps": 1},
    )
    trainer = Trainer(second, parallel_mode="none")  # the pretrained config wins over the preset
    start = load_file(tmp_path / "run" / "model.safetensors")
    assert trainer.model_config.n_layer == 2
    assert all(torch.equal(start[n], p) for n, p in trainer.model.state_dict().items())
    bad = tiny_config(tmp_path, model={"init_from": str(tmp_path / "run"), "n_layer": 5})
    with pytest.raises(BadInputError, match="does not match"):
        Trainer(bad, parallel_mode="none")
    with pytest.raises(BadInputError, match="no model found"):
        Trainer(tiny_config(tmp_path, model={"init_from": str(tmp_path / "missing")}), parallel_mode="none")


RESUME_TOML = """
[model]
preset = "tiny"
[optim]
lr = 3e-3
warmup = 4
[batch]
micro_batch = 2
grad_accum = 2
seq_len = 32
[run]
steps = {steps}
eval_every = 10
eval_batches = 1
ckpt_every = 5
threads = 1
[data]
kind = "synthetic"
vocab_size = 256
"""


def _pretrain(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "engine.cli",
        "train",
        "pretrain",
        "--config",
        str(config),
        "--out",
        str(out),
    ]
    return subprocess.Popen([*cmd, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_sigkill_is_exact(tmp_path):
    steps = 30
    config = tmp_path / "tmp.toml"
    config.write_text(RESUME_TOML.format(steps=steps))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    victim = _pretrain(config, killed)
    pointer = killed / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 120
    while not (pointer.exists() and json.loads(pointer.read_text())["step"] >= 10):
        assert victim.poll() is None, victim.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert killed_at < steps and not (killed / "model.safetensors").exists(), (
        "the run finished before the kill"
    )
    resumed = _pretrain(config, killed, "--resume")
    # the uninterrupted reference runs here meanwhile, through the same code as the command
    Trainer(TrainConfig.from_toml(config), out_dir=whole).train()
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]
    a, b = _log(whole), _log(killed)
    assert [r["step"] for r in b] == list(range(1, steps + 1))
    for key in ("loss", "grad_norm", "lr", "val_loss"):
        assert [r.get(key) for r in a] == [r.get(key) for r in b], key  # bitwise: JSON floats round-trip
    wa, wb = load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bench_train_reports_mfu(capsys):
    args = ["bench", "train", "--preset", "tiny", "--steps", "1", "--micro-batch", "2", "--threads", "1"]
    assert main([*args, "--gemm-size", "256", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["preset"] == "tiny" and result["tokens_per_s"] > 0 and result["gemm_peak_gflops"] > 0
    achieved = result["tokens_per_s"] * result["flops_per_token"] / 1e9
    assert result["mfu"] == pytest.approx(achieved / result["gemm_peak_gflops"], rel=0.02)
