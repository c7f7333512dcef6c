"""Model bundles: manifest verification, tampering, and `tessera export` from a checkpoint."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engine.bundle import (
    CONFIG_FILE,
    DECODE_FILE,
    MANIFEST_FILE,
    PREFILL_FILE,
    TEXT_TOKENIZER_FILE,
    WEIGHTS_FILE,
    Bundle,
    verify,
    write_manifest,
)
from engine.cli import main
from engine.errors import BadInputError, BundleError
from training.export import load_checkpoint
from training.export_commands import check_components


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_tiny_bundle_is_complete(tiny_bundle):
    b = Bundle.load(tiny_bundle)
    files = b.manifest["files"]
    for rel in (CONFIG_FILE, PREFILL_FILE, DECODE_FILE, "model/weights.bin", WEIGHTS_FILE,
                TEXT_TOKENIZER_FILE, "image_tokenizer/encoder.onnx", "image_tokenizer/decoder.onnx",
                "retriever/config.json", "memory/index.faiss"):
        assert rel in files and len(files[rel]["sha256"]) == 64
    assert MANIFEST_FILE not in files
    assert b.image_tokenizer_dir.is_dir() and b.retriever_dir.is_dir() and b.memory_dir.is_dir()
    export = b.config["export"]
    assert export["opset"] >= 17 and 0 <= b.parity < 1e-3
    assert b.precisions == ["fp32", "int8"] and 0 < export["parity_int8_max_abs_logit_diff"] < 0.5
    with pytest.raises(BundleError, match="precision"):
        b.backend("cpu", precision="fp8")
    assert b.vocab.size <= b.model_config["vocab_size"]


@pytest.mark.parametrize("rel", [DECODE_FILE, "memory/table.npz", CONFIG_FILE])
def test_a_changed_byte_is_refused_naming_the_file(copy, rel):
    data = bytearray((copy / rel).read_bytes())
    data[len(data) // 2] ^= 1
    (copy / rel).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rel.replace(".", r"\.") + ".*manifest hash"):
        Bundle.load(copy)


def test_missing_and_extra_files_are_refused(copy):
    (copy / "memory" / "notes.txt").write_text("hello")
    with pytest.raises(BundleError, match="memory/notes.txt is not in its manifest"):
        verify(copy)
    (copy / "memory" / "notes.txt").unlink()
    (copy / ".DS_Store").write_text("finder")  # hidden files are ignored
    verify(copy)
    (copy / PREFILL_FILE).unlink()
    with pytest.raises(BundleError, match="incomplete: model/prefill.onnx is missing"):
        Bundle.load(copy)


def test_interrupted_or_broken_manifests(copy, tmp_path):
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    (copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not a valid manifest"):
        Bundle.load(copy)
    evil = {**manifest, "files": {**manifest["files"], "../outside": {"sha256": "0", "size": 0}}}
    (copy / MANIFEST_FILE).write_text(json.dumps(evil))
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(copy)
    del manifest["files"][TEXT_TOKENIZER_FILE]
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="tokenizer.json"):
        Bundle.load(copy)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.load(copy)
    with pytest.raises(BundleError, match="not a folder"):
        Bundle.load(tmp_path / "nowhere")


def test_rewritten_manifest_makes_a_valid_bundle_again(copy):
    config = json.loads((copy / CONFIG_FILE).read_text())
    config["format"] = "tessera-bundle/999"
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    write_manifest(copy)
    with pytest.raises(BundleError, match="format"):
        Bundle.load(copy)


def test_export_command_from_a_checkpoint(tiny_bundle, tmp_path, capsys):
    b = Bundle.load(tiny_bundle)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(b.weights_path, ckpt / WEIGHTS_FILE)
    (ckpt / CONFIG_FILE).write_text(json.dumps({"model": b.model_config, "vocab": b.vocab.to_dict(),
                                                 "tasks": ["t2i"]}))
    out = tmp_path / "exported"
    args = ["export", str(ckpt), "--out", str(out), "--tokenizer", str(b.image_tokenizer_dir),
            "--text-tokenizer", str(b.text_tokenizer_path), "--json"]
    assert main(args) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["tasks"] == ["t2i"] and config["export"]["parity_max_abs_logit_diff"] < 1e-3
    new = Bundle.load(out)
    assert new.retriever_dir is None and new.image_tokenizer_dir.is_dir()
    ids = np.array([[1, 30, 31, 2]])
    before, after = b.backend("cpu").prefill(ids)[0], new.backend("cpu").prefill(ids)[0]
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert main(args) == 1  # exists: refused without --force (a clear error, exit code 1)
    assert "--force" in capsys.readouterr().err

    # what the studio ships: no torch weights, no int8 twins, no training leftovers, a display name
    tok = tmp_path / "tok"
    shutil.copytree(b.image_tokenizer_dir, tok)
    (tok / "checkpoint-0000010.safetensors").write_bytes(b"x")
    (tok / "train_log.jsonl").write_text("{}\n")
    args[args.index("--tokenizer") + 1] = str(tok)
    assert main([*args, "--force", "--runtime-only", "--no-int8", "--name", "shipped"]) == 0
    shipped = Bundle.load(out)
    files = set(shipped.manifest["files"])
    assert WEIGHTS_FILE not in files and not any("int8" in f or f.endswith((".safetensors", ".jsonl"))
                                                 for f in files)
    assert shipped.precisions == ["fp32"] and shipped.config["name"] == "shipped"
    np.testing.assert_allclose(shipped.backend("cpu").prefill(ids)[0], before, atol=1e-5)


def test_export_refuses_mismatched_tokenizers(tiny_bundle, tmp_path):
    b = Bundle.load(tiny_bundle)
    other = type(b.vocab)(b.vocab.text_size + 1, b.vocab.image_size, b.vocab.seg_size, b.vocab.image_grid)
    with pytest.raises(BadInputError, match="text ids"):
        check_components(other, b.image_tokenizer_dir, b.text_tokenizer_path)
    other = type(b.vocab)(b.vocab.text_size, 99, b.vocab.seg_size, b.vocab.image_grid)
    with pytest.raises(BadInputError, match="codes"):
        check_components(other, b.image_tokenizer_dir, b.text_tokenizer_path)
    with pytest.raises(BadInputError, match="not a model checkpoint"):
        load_checkpoint(tmp_path)


def test_export_takes_the_parts_the_run_recorded(tiny_bundle, tmp_path, capsys):
    """The run's config.json records its tokenizers by hash: export takes them without being told,
    refuses others with one line naming both, and refuses a memory bank made by another retriever."""
    from engine.memory import PARAMS_FILE
    from training.components import record

    b = Bundle.load(tiny_bundle)
    parts = tmp_path / "parts"
    for name, src in (("vq", b.image_tokenizer_dir), ("retriever", b.retriever_dir),
                      ("memory", b.memory_dir)):
        shutil.copytree(src, parts / name)
    shutil.copy(b.text_tokenizer_path, parts / TEXT_TOKENIZER_FILE)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(b.weights_path, ckpt / WEIGHTS_FILE)
    trained_with = record(image_tokenizer=parts / "vq", text_tokenizer=parts / TEXT_TOKENIZER_FILE)
    (ckpt / CONFIG_FILE).write_text(json.dumps({"model": b.model_config, "vocab": b.vocab.to_dict(),
                                                 "trained_with": trained_with}))
    out = tmp_path / "exported"
    # no tokenizer named: the recorded ones (the shipped Shapes ones have other sizes and are refused)
    assert main(["export", str(ckpt), "--out", str(out), "--no-int8"]) == 0
    capsys.readouterr()
    exported = Bundle.load(out).image_tokenizer_dir
    assert (exported / "encoder.onnx").read_bytes() == (parts / "vq" / "encoder.onnx").read_bytes()

    other = tmp_path / "other-vq"  # same codebook and grid, other encoder: the size checks pass
    shutil.copytree(parts / "vq", other)
    with (other / "encoder.onnx").open("ab") as f:
        f.write(b"\0")
    assert main(["export", str(ckpt), "--out", str(tmp_path / "x"), "--tokenizer", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(other) in err and str(parts / "vq") in err

    params = json.loads((parts / "memory" / PARAMS_FILE).read_text())
    params["built_from"] = record(retriever=b.retriever_dir)
    (parts / "memory" / PARAMS_FILE).write_text(json.dumps(params))
    shutil.copy(parts / "retriever" / "config.json", parts / "retriever" / "text_encoder.onnx")  # another one
    args = ["export", str(ckpt), "--out", str(tmp_path / "y"), "--memory", str(parts / "memory")]
    assert main([*args, "--retriever", str(parts / "retriever")]) == 1
    assert "memory bank" in capsys.readouterr().err
    assert main([*args, "--retriever", str(b.retriever_dir), "--no-int8"]) == 0


@pytest.mark.slow
def test_checked_in_tiny_bundle_is_current(tmp_path):
    """tests/data/tiny-bundle (the fast path of every engine test) is what the build makes today: the same
    config, files and weights, graphs with the same inputs and outputs (their bytes vary with the
    exporter)."""
    import onnx
    from tiny_bundle import CHECKED_IN, build

    fresh = build(tmp_path / "fresh")
    hint = "tests/data/tiny-bundle is out of date: python tests/tiny_bundle.py"
    configs = [json.loads((b / CONFIG_FILE).read_text()) for b in (CHECKED_IN, fresh)]
    for c in configs:
        c.pop("export")  # versions and date
    assert configs[0] == configs[1], hint
    files = [json.loads((b / MANIFEST_FILE).read_text())["files"] for b in (CHECKED_IN, fresh)]
    assert sorted(files[0]) == sorted(files[1]), hint
    for name in files[0]:
        if name.endswith(".onnx"):
            graphs = [onnx.load(str(b / name), load_external_data=False).graph for b in (CHECKED_IN, fresh)]
            io = [([i.name for i in g.input], [o.name for o in g.output]) for g in graphs]
            assert io[0] == io[1], f"{name}: {hint}"
        elif name != CONFIG_FILE:
            assert files[0][name]["sha256"] == files[1][name]["sha256"], f"{name}: {hint}"
