"""Engine on the tiny bundle: event streams, CFG batch layout, retrieval, re-ranking, determinism,
cancellation, failures, bad input, task gating, inpainting's pixel guarantee. The torch-free runtime is
checked by the self-test test in test_gen_commands.py (every task with torch and training unimportable)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from engine.engine import Engine
from engine.errors import BadInputError, UnsupportedTaskError
from engine.events import Cancelled, Failed, Finished, PartialImage, Progress, Retrieved
from engine.retriever import text_image_score
from engine.tasks import forced_image_span, mask_cells

PROMPT = "a red circle above a blue square"


class SpyBackend:
    """Wraps a backend: records prefill rows and decode batch sizes, can be slow or fail."""

    def __init__(self, inner, delay: float = 0.0, fail_at: int | None = None):
        self.inner, self.delay, self.fail_at = inner, delay, fail_at
        self.vocab_size, self.max_len, self.provider = inner.vocab_size, inner.max_len, inner.provider
        self.prefills: list[np.ndarray] = []
        self.decodes: list[int] = []

    def prefill(self, ids, n_pad=None):
        pads = n_pad if n_pad is not None else [0] * len(ids)
        self.prefills.append([row[p:] for row, p in zip(ids, pads, strict=True)])
        return self.inner.prefill(ids, n_pad)

    def decode(self, ids, state):
        self.decodes.append(ids.shape[0])
        time.sleep(self.delay)
        if self.fail_at is not None and len(self.decodes) >= self.fail_at:
            raise RuntimeError("decode exploded")
        return self.inner.decode(ids, state)

    def reorder(self, state, index):
        return self.inner.reorder(state, index)


def clone(engine: Engine, backend=None, tasks=None) -> Engine:
    bundle = engine.bundle
    if tasks is not None:
        bundle = dataclasses.replace(bundle, config={**bundle.config, "tasks": list(tasks)})
    return Engine(
        bundle,
        backend or engine.backend,
        engine.text_tokenizer,
        engine.image_tokenizer,
        engine.retriever,
        engine.bank,
    )


@pytest.fixture(scope="module")
def engine(tiny_bundle, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # retrieval looks for a user library: never the real one
        mp.setenv("TESSERA_HOME", str(tmp_path_factory.mktemp("home")))
        yield Engine.load(tiny_bundle)


@pytest.fixture(scope="module")
def picture(engine):
    return engine.generate(PROMPT, seed=1, retrieve=0).result().candidates[0].image


def test_load_reports_identity(engine, tiny_bundle, tmp_path, monkeypatch):
    assert engine.model_id.startswith("tiny-random-0-") and len(engine.model_id) == len("tiny-random-0-") + 8
    assert engine.provider in ("CPU", "CUDA")
    assert engine.tasks == {"generate", "caption", "answer", "inpaint", "edit", "segment", "ground", "layout"}
    assert engine.seg_class_names[0] == "background" and len(engine.seg_class_names) == engine.vocab.seg_size
    # None = the bundled model under assets/models/shapes
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "shapes").symlink_to(tiny_bundle)
    monkeypatch.setenv("TESSERA_ASSETS", str(tmp_path))
    assert Engine.load().model_id == engine.model_id


def test_model_id_follows_what_shapes_the_outputs(engine, tiny_bundle, tmp_path):
    import shutil

    from engine.bundle import CONFIG_FILE, ONNX_WEIGHTS_FILE, write_manifest

    def variant(name: str, path: str, change) -> str:
        copy = tmp_path / name
        shutil.copytree(tiny_bundle, copy)
        (copy / path).write_bytes(change((copy / path).read_bytes()))
        write_manifest(copy)
        return Engine.load(copy).model_id

    def flip_last_byte(data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1])

    def with_key(key: str):
        return lambda data: json.dumps({**json.loads(data), key: "x"}).encode()

    # another training of the same preset: same graphs, other weights
    assert variant("retrained", ONNX_WEIGHTS_FILE, flip_last_byte) != engine.model_id
    # the same transformer with another image decoder draws other images
    assert variant("redecoded", "image_tokenizer/config.json", with_key("note")) != engine.model_id
    # a re-export of the same files differs only in config.json's export record
    assert variant("reexported", CONFIG_FILE, with_key("exported_again")) == engine.model_id


def test_generate_event_stream(engine):
    job = engine.generate(PROMPT, n=2, seed=7, retrieve=2)
    events = list(job)
    h, w = engine.vocab.image_grid
    assert isinstance(events[0], Retrieved) and 1 <= len(events[0].documents) <= 2
    for doc in events[0].documents:
        assert doc.source == "bundle" and doc.text and doc.image.shape == (16, 16, 3)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.done for p in progress] == list(range(1, h * w + 1))
    assert all(p.total == h * w and p.tokens_per_s > 0 for p in progress)
    partial = [e for e in events if isinstance(e, PartialImage)]
    assert [(p.rows_done, p.candidate) for p in partial] == [
        (r, c) for r in range(1, h + 1) for c in range(2)
    ]
    # a preview follows the Progress event that completed its row
    first_row_at = events.index(partial[0])
    assert events[first_row_at - 1] == progress[w - 1]
    assert np.all(partial[0].image[4:] == 128)  # rows not generated yet are neutral grey
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.task == "generate" and job.state == "finished"
    assert len(finished.candidates) == 2
    assert all(c.image.shape == (16, 16, 3) and c.image.dtype == np.uint8 for c in finished.candidates)
    s = finished.settings
    assert (s["seed"], s["n"], s["cfg"], s["top_p"], s["retrieve"], s["prompt"]) == (
        7,
        2,
        3.0,
        0.9,
        2,
        PROMPT,
    )
    assert s["retrieved"] == len(events[0].documents)
    # the last previews are the final images, re-ranked
    finals = {c.image.tobytes() for c in finished.candidates}
    assert {p.image.tobytes() for p in partial[-2:]} == finals


def test_candidates_are_reranked_by_the_retriever(engine):
    finished = engine.generate(PROMPT, n=4, seed=3, retrieve=0).result()
    scores = [c.score for c in finished.candidates]
    assert scores == sorted(scores, reverse=True)
    recomputed = text_image_score(engine.retriever, PROMPT, np.stack([c.image for c in finished.candidates]))
    np.testing.assert_allclose(recomputed, scores, atol=1e-5)


def test_seed_determinism_and_reported_random_seed(engine):
    first = engine.generate(PROMPT, n=2, retrieve=0).result()
    seed = first.settings["seed"]
    assert isinstance(seed, int)
    again = engine.generate(PROMPT, n=2, seed=seed, retrieve=0).result()
    assert [c.image.tobytes() for c in again.candidates] == [c.image.tobytes() for c in first.candidates]
    other = engine.generate(PROMPT, n=2, seed=seed + 1, retrieve=0).result()
    assert [c.image.tobytes() for c in other.candidates] != [c.image.tobytes() for c in first.candidates]


def test_cfg_stream_layout_and_one_batch(engine):
    spy = SpyBackend(engine.backend)
    e = clone(engine, spy)
    e.generate(PROMPT, n=3, seed=0, retrieve=0).result()
    cond, uncond = spy.prefills[0]
    v = engine.vocab
    text = v.text_ids(engine.text_tokenizer.encode(PROMPT))
    assert cond.tolist() == [v.eos, *text.tolist(), v.brk]
    assert uncond.tolist() == [v.eos, v.mask(0), v.brk]  # the condition text replaced by <mask:0>
    assert set(spy.decodes) == {6}  # 3 candidates x (cond, uncond) in one batch
    spy.prefills.clear(), spy.decodes.clear()
    e.generate(PROMPT, n=3, seed=0, cfg=1.0, retrieve=0).result()  # scale 1: no second stream
    assert len(spy.prefills[0]) == 1 and set(spy.decodes) == {3}
    spy.prefills.clear()
    finished = e.generate(PROMPT, n=1, seed=0, retrieve=2).result()
    cond, uncond = spy.prefills[0]
    prefix = len(cond) - (len(text) + 2)
    assert finished.settings["retrieved"] >= 1 and prefix > 0
    assert cond[0] == v.eos and np.array_equal(cond[:prefix], uncond[:prefix])  # same documents in both


def test_retrieve_zero_skips_retrieval(engine):
    events = list(engine.generate(PROMPT, seed=0, retrieve=0))
    assert not any(isinstance(e, Retrieved) for e in events)
    assert events[-1].settings["retrieved"] == 0


def test_cdk_runs(engine):
    finished = engine.generate(PROMPT, n=2, seed=0, cdk_alpha=0.1, cdk_k=5, retrieve=0).result()
    assert finished.settings["cdk_alpha"] == 0.1 and len(finished.candidates) == 2


def test_cancel_from_another_thread_within_one_step(engine):
    spy = SpyBackend(engine.backend, delay=0.03)
    e = clone(engine, spy)
    job = e.generate(PROMPT, n=2, seed=0, retrieve=0)
    events: list = []
    consumer = threading.Thread(target=lambda: events.extend(job))
    consumer.start()
    while len(spy.decodes) < 3:
        time.sleep(0.005)
    job.cancel()
    at_cancel = len(spy.decodes)
    consumer.join(5)
    assert not consumer.is_alive()
    assert isinstance(events[-1], Cancelled) and job.state == "cancelled"
    assert len(spy.decodes) <= at_cancel + 1
    assert not any(isinstance(ev, Finished) for ev in events)
    assert isinstance(e.generate(PROMPT, seed=0, retrieve=0).result(), Finished)


def test_runtime_error_becomes_failed_and_engine_stays_usable(engine):
    e = clone(engine, SpyBackend(engine.backend, fail_at=3))
    events = list(e.generate(PROMPT, seed=0, retrieve=0))
    assert isinstance(events[-1], Failed) and "decode exploded" in events[-1].message
    assert sum(isinstance(ev, (Finished, Failed, Cancelled)) for ev in events) == 1
    assert isinstance(engine.generate(PROMPT, seed=0, retrieve=0).result(), Finished)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "the prompt is empty"),
        ({"prompt": " \n\t\x00\x1b "}, "the prompt is empty"),
        ({"prompt": "a red circle " * 7700}, "the prompt is too long"),
        ({"prompt": 42}, "must be text"),
        ({"n": 0}, "n \\(candidates\\)"),
        ({"n": 1000}, "n \\(candidates\\)"),
        ({"seed": -1}, "seed"),
        ({"cfg": float("nan")}, "cfg"),
        ({"cdk_alpha": 0.1}, "cdk_alpha and cdk_k"),
        ({"cdk_alpha": 2.0, "cdk_k": 5}, "alpha"),
        ({"top_p": 0.0}, "top-p"),
        ({"temperature": 0.0}, "temperature"),
        ({"retrieve": 99}, "retrieve"),
    ],
)
def test_generate_bad_input_raises_at_creation(engine, kwargs, message):
    args = {"prompt": PROMPT, **kwargs}
    with pytest.raises(BadInputError, match=message):
        engine.generate(args.pop("prompt"), **args)
    assert isinstance(engine.generate(PROMPT, seed=0, cfg=1.0, retrieve=0).result(), Finished)  # still usable


def test_long_prompt_message_names_the_limit(engine):
    with pytest.raises(BadInputError) as info:
        engine.generate("x" * 100_000)
    text = str(info.value)
    assert "tokens" in text and "at most" in text and "shorten it" in text and len(text) < 200


def test_control_characters_are_stripped(engine):
    finished = engine.generate("a red\x00 circle\n\tabove\x1b[31m a blue square", seed=0, retrieve=0).result()
    assert finished.settings["prompt"] == "a red circle above [31m a blue square"


def test_bad_images_and_masks(engine, picture, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(BadInputError, match="not an image file"):
        engine.caption(notes)
    with pytest.raises(BadInputError, match="uint8"):
        engine.segment(picture.astype(np.float32))
    with pytest.raises(BadInputError, match="RGB"):
        engine.segment(np.zeros((16, 16, 5), np.uint8))
    with pytest.raises(BadInputError, match="the mask is 8x8 pixels but the image is 16x16"):
        engine.inpaint(picture, np.ones((8, 8), bool))
    with pytest.raises(BadInputError, match="the mask is empty"):
        engine.inpaint(picture, np.zeros((16, 16), bool))
    with pytest.raises(BadInputError, match="question is empty"):
        engine.answer(picture, "\x07")
    with pytest.raises(BadInputError, match="instruction is empty"):
        engine.edit(picture, "")
    # still usable
    assert engine.segment(picture).result().candidates[0].segmentation.shape == (4, 4)


def test_unsupported_tasks(engine, picture):
    pretrained = clone(engine, tasks=())  # a config without "tasks": what pretraining teaches
    assert pretrained.tasks == {"generate", "caption"}
    for call in (
        lambda: pretrained.segment(picture),
        lambda: pretrained.edit(picture, "make it blue"),
        lambda: pretrained.answer(picture, "which colour?"),
        lambda: pretrained.inpaint(picture, np.ones((16, 16), bool)),
        lambda: pretrained.ground(PROMPT, [("circle", (0, 0, 100, 100))]),
    ):
        with pytest.raises(UnsupportedTaskError, match="this model was not trained for"):
            call()
    assert pretrained.caption(picture).result().candidates[0].text is not None  # caption_infill prompt
    only_seg = clone(engine, tasks=("segment",))
    with pytest.raises(UnsupportedTaskError, match="text-to-image generation"):
        only_seg.generate(PROMPT)


def test_image_tasks(engine, picture):
    caption = engine.caption(picture).result()
    assert isinstance(caption.candidates[0].text, str) and caption.settings["greedy"]
    assert engine.caption(picture).result().candidates[0].text == caption.candidates[0].text  # greedy
    events = list(engine.answer(picture, "what colour is the circle?"))
    assert any(isinstance(e, Progress) for e in events) and isinstance(events[-1].candidates[0].text, str)
    grid = engine.segment(picture).result().candidates[0].segmentation
    assert grid.shape == tuple(engine.vocab.image_grid) and grid.max() < len(engine.seg_class_names)
    edited = engine.edit(picture, "make the circle blue", n=2, seed=0).result()
    assert len(edited.candidates) == 2 and edited.candidates[0].image.shape == (16, 16, 3)
    grounded = engine.ground("a red circle", [("circle", (10, 10, 120, 120))], seed=0).result()
    assert grounded.settings["boxes"] == [["circle", [10, 10, 120, 120]]]


def test_edit_guidance_masks_the_instruction(engine, picture):
    spy = SpyBackend(engine.backend)
    clone(engine, spy).edit(picture, "make the circle blue", seed=0).result()
    cond, uncond = spy.prefills[0]
    v = engine.vocab
    instr = v.text_ids(engine.text_tokenizer.encode("make the circle blue")).tolist()
    assert cond[-len(instr) - 1 : -1].tolist() == instr
    assert uncond.tolist() == [*cond[: -len(instr) - 1].tolist(), v.mask(0), v.brk]


@pytest.mark.parametrize("size", [(16, 16), (40, 24)])
def test_inpaint_leaves_pixels_outside_the_mask_bit_identical(engine, size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = np.zeros(size, bool)
    mask[size[0] // 4 : size[0] // 2, size[1] // 3 : size[1] // 2] = True
    events = list(engine.inpaint(image, mask, "a blue square", n=2, seed=0))
    finished = events[-1]
    assert isinstance(finished, Finished) and len(finished.candidates) == 2
    for cand in finished.candidates:
        assert cand.image.shape == image.shape
        assert np.array_equal(cand.image[~mask], image[~mask])
        assert not np.array_equal(cand.image[mask], image[mask])  # the region was regenerated
    for preview in (e for e in events if isinstance(e, PartialImage)):
        assert np.array_equal(preview.image[~mask], image[~mask])


def test_inpaint_blends_by_a_soft_mask_once(engine):
    """A float mask is coverage (the studio's feathered brush): the engine's result is the only
    composite, hard inside, the original outside, a blend on the feathered edge."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    alpha = np.zeros((16, 16), np.float32)
    alpha[4:12, 4:12] = 0.5
    alpha[6:10, 6:10] = 1.0
    hard = engine.inpaint(image, alpha > 0, seed=3).result().candidates[0].image
    soft = engine.inpaint(image, alpha, seed=3).result().candidates[0].image
    assert np.array_equal(soft[alpha == 0], image[alpha == 0])
    assert np.array_equal(soft[alpha == 1], hard[alpha == 1])  # the same cells regenerated, same seed
    edge = alpha == 0.5
    expected = np.rint((image[edge].astype(np.float32) + hard[edge]) / 2)
    assert np.abs(soft[edge] - expected).max() <= 1 and not np.array_equal(soft[edge], hard[edge])


def test_inpaint_keeps_known_codes_and_decodes_only_the_hole(engine, picture):
    v = engine.vocab
    _, ids = engine._image(picture)
    region = np.zeros(v.image_grid, bool)
    region[1, 1:3] = region[2, 2] = True  # cells 5, 6, 10
    forced = np.where(region.reshape(-1), -1, ids)
    spy = SpyBackend(engine.backend)
    e = clone(engine, spy)
    from engine.sampling import guided_sampler

    steps = list(forced_image_span(e, np.array([v.eos, v.brk]), None, 2, guided_sampler(0, None), forced))
    tokens = steps[-1].tokens
    assert tokens.shape == (2, 16) and steps[-1].done == 16
    known = forced >= 0
    assert np.array_equal(tokens[:, known], np.broadcast_to(forced[known], (2, int(known.sum()))))
    assert v.is_image(tokens[:, ~known]).all()
    # the prefix up to the first hole is prefilled; decoding covers cells 5..10 only
    assert len(spy.prefills[0][0]) == 2 + 5 and len(spy.decodes) == 10 - 5


def test_mask_cells_maps_pixels_to_cells():
    mask = np.zeros((40, 24), bool)
    mask[11, 13] = True  # row 11 of 40 -> cell row 1 of 4; col 13 of 24 -> cell col 2 of 4
    cells = mask_cells(mask, (4, 4))
    assert cells.sum() == 1 and cells[1, 2]


def test_user_library_is_searched_beside_the_bank(engine, tessera_home, tmp_path):
    rng = np.random.default_rng(5)
    for i in range(3):
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / f"ref{i}.png")
    e = clone(engine)
    assert e.retrieve(2, text=PROMPT)[0][0].source == "bundle"  # no library yet: nothing created
    assert not (tessera_home / "library").exists()
    e.library.add([tmp_path])
    assert len(e.library) == 3
    library_only = Engine(e.bundle, e.backend, e.text_tokenizer, e.image_tokenizer, e.retriever, None)
    docs = library_only.retrieve(2, text=PROMPT)
    assert docs and all(doc.source == "library" and doc.image is not None for doc, _ in docs)
    for _, ids in docs:  # an image-only document: exactly the grid of image ids
        assert len(ids) == engine.vocab.image_tokens_per_image and engine.vocab.is_image(ids).all()
    spy = SpyBackend(engine.backend)
    library_only.backend = spy
    events = list(library_only.generate(PROMPT, seed=0, retrieve=2))
    assert [d.source for d in events[0].documents] == ["library"] * len(events[0].documents)
    cond = spy.prefills[0][0]
    assert cond[0] == engine.vocab.eos and np.array_equal(cond[1 : 1 + len(docs[0][1])], docs[0][1])
    # a fresh engine finds the library on disk
    reopened = clone(engine)
    reopened.bank = None
    assert [d.source for d, _ in reopened.retrieve(2, text=PROMPT)] == [d.source for d, _ in docs]
