"""`tessera import janus` on tiny random JanusConfig checkpoints (transformers' classes, no download):
parity with the reference at every precision, the engine decoding an imported bundle, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from engine.cli import main  # noqa: E402
from engine.errors import BadInputError, UnsupportedTaskError  # noqa: E402
from training.importers.janus import import_janus  # noqa: E402
from training.importers.janus_random import write_random_janus  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return write_random_janus(tmp_path_factory.mktemp("janus") / "hf", "tiny")


@pytest.fixture(scope="module")
def bundle(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("janus-bundle") / "bundle"
    import_janus(hf_dir, out, "fp32", log=lambda *_: None)
    return out


def test_import_check_fp32_matches_the_reference_exactly(hf_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["import", "janus", str(hf_dir), "--out", str(out), "--check", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["greedy_image_token_match"] == 1.0
    assert result["max_abs_logit_diff"] < 1e-4
    assert result["max_abs_pixel_diff"] <= 1.0
    config = json.loads((out / "config.json").read_text())
    assert config["vocab"]["image_grid"] == [4, 4] and config["tasks"] == ["t2i"]


@pytest.mark.slow
@pytest.mark.parametrize("precision, max_logit_diff", [("fp16", 0.01), ("int8", 0.1), ("int4", 1.0)])
def test_quantised_imports_stay_near_the_reference(hf_dir, tmp_path, precision, max_logit_diff):
    from training.importers.janus_check import check

    out = tmp_path / precision
    import_janus(hf_dir, out, precision, log=lambda *_: None)
    result = check(hf_dir, out)
    assert result["precision"] == precision
    assert 0 < result["max_abs_logit_diff"] < max_logit_diff
    assert result["max_abs_pixel_diff"] <= 1.0  # the VQ decoder is always float32


@pytest.mark.parametrize("bits", [4, 8])
def test_block_quantisation_is_what_matmulnbits_computes(tmp_path, bits):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from training.importers.onnx_llama import BLOCK, quantize_blocks

    rng = np.random.default_rng(bits)
    w = rng.normal(size=(48, 2 * BLOCK)).astype(np.float32)  # (N out, K in)
    x = rng.normal(size=(3, 2 * BLOCK)).astype(np.float32)
    packed, scales = quantize_blocks(w, bits)
    node = helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", K=2 * BLOCK, N=48,
                            bits=bits, block_size=BLOCK)
    graph = helper.make_graph([node], "q",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2 * BLOCK])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 48])],
                              [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save_model(model, tmp_path / "q.onnx")
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    # dequantise by hand: q = round(w / s) within +-(2^(bits-1) - 1)
    s = scales.reshape(48, 2, 1)
    top = 2 ** (bits - 1) - 1
    deq = (np.clip(np.rint(w.reshape(48, 2, BLOCK) / s), -top, top) * s).reshape(48, -1)
    np.testing.assert_allclose(got, x @ deq.T, rtol=1e-4, atol=1e-4)
    exact = x @ w.T  # quantisation noise: ~10 % of the signal at 4 bits, under 1 % at 8
    assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < (0.2 if bits == 4 else 0.02)


def test_engine_generates_with_janus_prompts_and_refuses_image_input_tasks(bundle, tessera_home):
    from engine.engine import Engine
    from engine.events import Finished, PartialImage

    engine = Engine.load(bundle, device="cpu")
    assert engine.tasks == {"generate"}
    cond, uncond = engine.chat_prompt.image_prompts(engine.vocab, engine.text_tokenizer, "a red circle")
    fmt = engine.chat_prompt
    assert len(cond) == len(uncond) and cond[0] == uncond[0] and cond[-1] == uncond[-1]
    assert list(engine.vocab.to_bpe(uncond)) == [fmt.bos_id, *[fmt.pad_id] * (len(cond) - 2), fmt.boi_id]
    events = list(engine.generate("a red circle", n=2, seed=3, cfg=5.0, temperature=0.9, top_p=0.8))
    previews = [e for e in events if isinstance(e, PartialImage)]
    done = events[-1]
    assert isinstance(done, Finished) and len(done.candidates) == 2
    assert done.candidates[0].image.shape == (8, 8, 3)
    assert len(previews) == 2 * 4  # a preview per candidate per finished row of the 4x4 grid
    again = list(engine.generate("a red circle", n=2, seed=3, cfg=5.0, temperature=0.9, top_p=0.8))[-1]
    pairs = zip(done.candidates, again.candidates, strict=True)
    assert all(np.array_equal(a.image, b.image) for a, b in pairs)
    with pytest.raises(UnsupportedTaskError, match="SigLIP"):
        engine.caption(np.zeros((8, 8, 3), np.uint8))


def test_the_studio_lists_an_imported_bundle_with_its_size_and_task(bundle, tessera_home):
    from engine.installed import describe
    from engine.task_table import EngineTask

    info = describe(bundle, "installed")  # File › Model's entry: read without loading the graphs
    assert info.available and info.image_size == 8 and info.tasks == {EngineTask.GENERATE}


def test_refuses_pickle_checkpoints_with_one_line(hf_dir, tmp_path, capsys):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((hf_dir / "config.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(BadInputError, match="never unpickles"):
        import_janus(folder, tmp_path / "out", log=lambda *_: None)
    assert main(["import", "janus", str(folder), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert "pytorch_model.bin" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept_without_force(bundle, hf_dir):
    before = (bundle / "manifest.json").read_text()
    with pytest.raises(BadInputError, match="--force"):
        import_janus(hf_dir, bundle, log=lambda *_: None)
    assert (bundle / "manifest.json").read_text() == before
