"""`tessera train recipe shapes`: the stages of the default model (docs/training.md)."""

from __future__ import annotations

import tomllib

from engine.cli import main


def test_the_default_recipe_trains_the_multi_task_model_from_scratch(tmp_path, capsys):
    assert main(["train", "recipe", "shapes", "--dry-run", "--out", str(tmp_path)]) == 0
    stages = [line.split(":")[0].strip() for line in capsys.readouterr().out.splitlines()]
    assert stages == ["image tokenizer", "decoder refinement", "decoder pixel head", "text tokenizer",
                      "retriever", "memory bank", "multi-task training", "export"]
    sft = tomllib.loads((tmp_path / "sft.toml").read_text())
    assert sft["model"]["grid_rows"] == sft["model"]["grid_cols"] == 8  # cell embeddings
    assert sft["data"]["loss"] == "output" and sft["data"]["separate_docs"] is True
    assert "init_from" not in sft["model"] and sft["run"]["out_dir"] == str(tmp_path / "sft")
