"""The retriever: bi-encoder training, ONNX export and runtime parity, document embeddings,
query dropout, the CLIP adapter, and engine.imageio."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import BadInputError
from engine.imageio import load_image
from engine.nn.retriever import BiEncoder, RetrieverConfig
from engine.retriever import (
    Embedder,
    OnnxRetriever,
    document_embeddings,
    encode_bytes,
    normalize,
    query_dropout,
    text_image_score,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and on a shared 2-core machine far more predictable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = RetrieverConfig(dim=32, byte_dim=16, width=32, text_layers=1, text_heads=2, image_size=32,
                       patch=4, channels=(16, 16, 32))


def shapes_pairs(n: int, size: int = 32):
    from training.data.shapes import ShapesWorld

    world = ShapesWorld("train", seed=3, size=size)
    samples = [world.sample(i) for i in range(n)]
    return [s.caption for s in samples], np.stack([s.image for s in samples])


def test_tiny_training_reduces_infonce():
    torch.manual_seed(0)
    texts, images = shapes_pairs(32)
    model = BiEncoder(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids, pixels = torch.from_numpy(encode_bytes(texts, TINY.max_bytes)), torch.from_numpy(images)
    losses = []
    for _ in range(40):
        loss, _ = model(ids, pixels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.0  # about chance (log 32 = 3.47) with the initial temperature
    assert np.mean(losses[-5:]) < 0.5 * losses[0]


def test_text_embedding_ignores_batch_padding():
    model = BiEncoder(TINY).eval()
    with torch.no_grad():
        alone = model.text(torch.from_numpy(encode_bytes(["a red circle"], 256)))
        padded = model.text(torch.from_numpy(encode_bytes(["a red circle", "x" * 200], 256)))[:1]
        chunked = model(
            [torch.from_numpy(encode_bytes(["a"], 256)), torch.from_numpy(encode_bytes(["b" * 90], 256))],
            torch.zeros((2, 32, 32, 3), dtype=torch.uint8))[0]
    assert torch.allclose(alone, padded, atol=1e-5)
    assert torch.isfinite(chunked)


def test_encode_bytes():
    ids = encode_bytes(["ab", "é", ""], 4)
    assert ids.shape == (3, 8) and ids[0, :3].tolist() == [98, 99, 0]
    assert ids[1, :2].tolist() == [0xC3 + 1, 0xA9 + 1] and not ids[2].any()
    assert encode_bytes(["x" * 100], 16).shape == (1, 16)  # cut at max_bytes


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from training.retriever_train import export

    torch.manual_seed(1)
    model = BiEncoder(TINY).eval()
    out = tmp_path_factory.mktemp("retriever")
    parity = export(model, out)
    return model, out, parity


def test_onnx_runtime_parity(exported):
    model, out, parity = exported
    assert parity["text_max_abs_diff"] < 1e-4 and parity["image_max_abs_diff"] < 1e-4
    rt = OnnxRetriever.load(out)
    assert isinstance(rt, Embedder) and rt.dim == 32 and rt.provider == "cpu"
    texts, images = shapes_pairs(5)
    texts = [*texts, "x", "a much longer caption " * 12]  # dynamic length, 1..256 bytes
    t, v = rt.embed_texts(texts), rt.embed_images(images)
    with torch.no_grad():
        ref_t = model.text(torch.from_numpy(encode_bytes(texts, 256))).numpy()
        ref_v = model.image(torch.from_numpy(images)).numpy()
    assert t.shape == (7, 32) and v.shape == (5, 32)  # dynamic batch
    assert np.abs(t - ref_t).max() < 1e-4 and np.abs(v - ref_v).max() < 1e-4
    assert np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    # one at a time equals batched; another image size is resized to the encoder's
    assert np.abs(rt.embed_texts(texts[:1]) - t[:1]).max() < 1e-5
    big = np.asarray(Image.fromarray(images[0]).resize((96, 96), Image.NEAREST))
    assert rt.embed_images(big).shape == (1, 32)
    with pytest.raises(BadInputError):
        rt.embed_texts(["ok", "  "])
    with pytest.raises(BadInputError):
        rt.embed_images(np.zeros((2, 8, 8), np.uint8))


class FakeEmbedder:
    dim = 3

    def embed_texts(self, texts):
        return normalize([[1.0, 0.0, 0.0] if "a" in t else [0.0, 1.0, 0.0] for t in texts])

    def embed_images(self, images):
        return normalize(np.tile([0.0, 0.0, 2.0], (len(images), 1)))


def test_document_embeddings_and_score():
    e = FakeEmbedder()
    img = np.zeros((4, 4, 3), np.uint8)
    docs = document_embeddings(e, ["a", None, "b"], [img, img, None])
    assert np.allclose(docs[0], normalize([1, 0, 1])) and np.allclose(docs[1], [0, 0, 1])
    assert np.allclose(docs[2], [0, 1, 0])
    with pytest.raises(BadInputError):
        document_embeddings(e, [None], [None])
    scores = text_image_score(e, "a", np.zeros((3, 4, 4, 3), np.uint8))
    assert scores.shape == (3,) and np.allclose(scores, 0)


def test_query_dropout():
    text = " ".join(f"w{i}" for i in range(200))
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    t1, im1 = query_dropout(text, image, np.random.default_rng(5))
    t2, im2 = query_dropout(text, image, np.random.default_rng(5))
    assert t1 == t2 and np.array_equal(im1, im2)  # seeded
    kept = len(t1.split()) / 200
    assert 0.7 < kept < 0.9
    cells = (im1 != image).any(-1).reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64).any(1)
    assert 0.1 < cells.mean() < 0.3 and image.sum() != im1.sum()
    assert query_dropout("one", None, np.random.default_rng(0), p=1.0)[0] == "one"  # a word always stays


# ---- engine.imageio --------------------------------------------------------------------------------
def test_load_image_modes(tmp_path):
    Image.new("RGBA", (80, 40), (255, 0, 0, 0)).save(tmp_path / "clear.png")  # transparent -> white
    assert (load_image(tmp_path / "clear.png", 16) == 255).all()
    Image.new("L", (30, 60), 100).save(tmp_path / "grey.jpg")
    assert load_image(tmp_path / "grey.jpg", 8).shape == (8, 8, 3)
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    raw = load_image(tmp_path / "rot.jpg", None)
    assert raw.shape == (40, 20, 3) and raw[:10].mean() > 200  # white half on top after the transpose


def test_load_image_bad_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:60])
    for name, reason in [("empty.png", "empty"), ("text.png", "not an image"), ("cut.png", "cut.png: "),
                         ("missing.png", "no such file")]:
        with pytest.raises(BadInputError, match=reason):
            load_image(tmp_path / name)
    with pytest.raises(BadInputError, match="too many pixels"):
        load_image(tmp_path / "ok.png", max_pixels=1000)


@pytest.mark.slow
def test_clip_adapter_local_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    import json

    from engine.retriever import CLIPEmbedder

    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=80, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    transformers.CLIPModel(cfg).save_pretrained(tmp_path)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz":
        vocab[ch], vocab[ch + "</w>"] = len(vocab), len(vocab) + 1
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizerFast(vocab_file=str(tmp_path / "vocab.json"),
                                         merges_file=str(tmp_path / "merges.txt"))
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                             crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(tmp_path)

    clip = CLIPEmbedder.load(tmp_path)
    assert isinstance(clip, Embedder) and clip.dim == 8
    t = clip.embed_texts(["a red circle", "blue"])
    v = clip.embed_images(np.zeros((3, 64, 64, 3), np.uint8))
    assert t.shape == (2, 8) and v.shape == (3, 8) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert text_image_score(clip, "red", np.zeros((3, 64, 64, 3), np.uint8)).shape == (3,)
    with pytest.raises(BadInputError):
        CLIPEmbedder.load(tmp_path / "nowhere")


def test_training_checkpoints_are_safetensors_and_resume_exactly(tmp_path):
    """No pickle: the checkpoint is safetensors + JSON; 2 steps, then --resume to 4 = 4 steps at once."""
    from engine.errors import BadInputError
    from training.retriever_train import RetrieverTrainConfig, train

    def config(out, steps):  # warmup beyond the run: the learning rates do not depend on `steps`
        return RetrieverTrainConfig(data="shapes", out=str(tmp_path / out), steps=steps, batch_size=8,
                                    warmup=10, scenes=16, threads=1, log_every=100, ckpt_every=2, model=TINY)

    straight, _ = train(config("a", 4), quiet=True)
    train(config("b", 2), quiet=True)
    assert not list((tmp_path / "b").rglob("*.pt"))
    assert {p.name for p in (tmp_path / "b" / "checkpoints" / "step-000002").iterdir()} == \
        {"model.safetensors", "trainer.safetensors", "state.json"}
    resumed, _ = train(config("b", 4), resume=True, quiet=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    (tmp_path / "b" / "checkpoint.pt").write_bytes(b"older pickle")
    with pytest.raises(BadInputError, match="pickle"):
        train(config("b", 4), resume=True, quiet=True)
