"""ONNX Runtime and torch backends: padded batches are exact, both give the same tokens, and the
runtime generates with torch unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
from spans import image_codes

from engine.bundle import Bundle
from engine.decode import left_pad
from engine.formats import unconditional_image_prompt
from engine.providers import CUDA, create_session, physical_cores, session_options
from engine.sampling import Argmax, ClassifierFreeGuidance, Sampler, guided_sampler


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return Bundle.load(tiny_bundle)


@pytest.fixture(scope="module")
def backends(bundle):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add synchronisation (badly, on a busy machine)
    yield {"onnx": bundle.backend("cpu", threads=1), "torch": bundle.torch_backend(max_batch=4)}
    torch.set_num_threads(threads)


def prompts(bundle, lengths=(9, 4, 1), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(bundle.vocab.text_offset, bundle.vocab.size, n) for n in lengths]


@pytest.mark.parametrize("name", ["onnx", "torch"])
def test_padded_batch_equals_each_row_alone(backends, bundle, name):
    be = backends[name]
    rows = prompts(bundle)
    ids, n_pad = left_pad(rows)
    assert n_pad.tolist() == [0, 5, 8]
    logits, state = be.prefill(ids, n_pad)
    for _ in range(3):  # decode steps on the padded batch
        nxt = np.array([7, 30, 100])
        rows = [np.append(r, t) for r, t in zip(rows, nxt, strict=True)]
        logits, state = be.decode(nxt[:, None], state)
    for i, row in enumerate(rows):
        alone, _ = be.prefill(row[None])
        assert np.abs(logits[i] - alone[0]).max() < 1e-4


def test_onnx_and_torch_logits_agree(backends, bundle):
    ids, n_pad = left_pad(prompts(bundle, seed=1))
    (lo, so), (lt, st) = backends["onnx"].prefill(ids, n_pad), backends["torch"].prefill(ids, n_pad)
    assert np.abs(lo - lt).max() < 1e-4
    index = np.array([0, 0, 2, 1])  # replicate and reorder rows
    so, st = backends["onnx"].reorder(so, index), backends["torch"].reorder(st, index)
    nxt = np.array([[3], [4], [5], [6]])
    (lo, _), (lt, _) = backends["onnx"].decode(nxt, so), backends["torch"].decode(nxt, st)
    assert np.abs(lo - lt).max() < 1e-4
    assert bundle.parity is not None and bundle.parity < 1e-3  # measured at export


@pytest.mark.parametrize("seeded", [False, True])
def test_same_tokens_for_the_same_seed_on_both_backends(backends, bundle, seeded):
    vocab = bundle.vocab
    cond = np.concatenate([[vocab.eos], prompts(bundle, (6,), seed=2)[0] % vocab.image_offset, [vocab.brk]])
    cond = np.maximum(cond, vocab.text_offset)
    out = {}
    for name, be in backends.items():
        sampler = guided_sampler(11, cfg_scale=3.0, top_p=0.9) if seeded else Sampler(
            [ClassifierFreeGuidance(3.0)], Argmax())
        out[name] = image_codes(be, cond, unconditional_image_prompt(vocab), 3, vocab, sampler)
    np.testing.assert_array_equal(out["onnx"], out["torch"])
    assert out["onnx"].shape == (3, *vocab.image_grid)


def test_int8_graphs_stay_close_to_float32(bundle, backends):
    int8 = bundle.backend("cpu", threads=1, precision="int8")
    ids, n_pad = left_pad(prompts(bundle, seed=3))
    (l8, s8), (l32, s32) = int8.prefill(ids, n_pad), backends["onnx"].prefill(ids, n_pad)
    nxt = np.array([[3], [4], [5]])
    (d8, _), (d32, _) = int8.decode(nxt, s8), backends["onnx"].decode(nxt, s32)
    for a, b in ((l8, l32), (d8, d32)):
        assert 0 < np.abs(a - b).max() < 0.1 * np.abs(b).max()  # quantisation noise, not a different model
    vocab = bundle.vocab
    cond = np.array([vocab.eos, vocab.text_offset + 5, vocab.brk])
    uncond = unconditional_image_prompt(vocab)
    codes = image_codes(int8, cond, uncond, 2, vocab, guided_sampler(0, 3.0))
    assert codes.shape == (2, *vocab.image_grid)


def test_providers_and_session_options(bundle, backends):
    assert backends["onnx"].provider in ("cpu", "cuda")
    so = session_options()
    assert so.intra_op_num_threads == physical_cores() >= 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if CUDA not in ort.get_available_providers():
        assert backends["onnx"].provider == "cpu"
        with pytest.raises(RuntimeError, match="CUDA"):
            create_session(bundle.prefill_path, device="cuda")


def test_bad_batches_are_refused(backends):
    be = backends["onnx"]
    with pytest.raises(ValueError):
        be.prefill(np.zeros((2, 0), np.int64))
    with pytest.raises(ValueError):
        be.prefill(np.zeros((2, 3), np.int64), np.array([0, 3]))  # a row of padding only
    with pytest.raises(ValueError, match="exceeds"):
        be.prefill(np.ones((1, be.max_len + 1), np.int64))


BLOCK_TORCH = """
import sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, BlockTorch())
"""


def test_generation_runs_where_torch_cannot_be_imported(tiny_bundle, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    script = textwrap.dedent(f"""
        import sys
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("the torch blocker is not active")
        import engine.backends, engine.bundle, engine.decode, engine.providers, engine.sampling
        from engine.bundle import Bundle
        from collections import deque
        from engine.decode import image_span, start, text_span
        from engine.formats import text_to_image_prompt, unconditional_image_prompt
        from engine.sampling import guided_sampler
        b = Bundle.load({str(tiny_bundle)!r})
        be = b.backend()
        v = b.vocab
        cond = text_to_image_prompt(v, v.text_ids([5, 6, 7]))
        stream = start(be, cond, unconditional_image_prompt(v), 2)
        (step,) = deque(image_span(stream, v, guided_sampler(0, 3.0)), maxlen=1)
        assert step.tokens.shape == (2, v.image_tokens_per_image), step.tokens.shape
        (step,) = deque(text_span(start(be, cond, None, 2), v, guided_sampler(0, None), 5), maxlen=1)
        assert len(step.tokens) == 2
        assert "torch" not in sys.modules
        print("ok", be.provider)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")
