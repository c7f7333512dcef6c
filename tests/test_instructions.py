from collections import Counter

import numpy as np
import pytest

from engine import formats as F
from engine.errors import BadInputError
from engine.instructions import (
    HOLE_MASK,
    PARAPHRASES,
    Task,
    box_text,
    document,
    heldout_paraphrases,
    infill_forced_ids,
    output_spec,
    prompt,
    rectangle,
    train_paraphrases,
)
from engine.vocab import Vocab
from training.data.instruction_data import (
    InstructionData,
    InstructionMixture,
    box_region,
    vqa_question,
    vqa_questions,
)
from training.data.shapes import COLORS, KINDS, SEG_CLASSES, ShapesWorld, class_mask, render, seg_grid
from training.text_tokenizer_train import shapes_corpus, train_text_tokenizer

K = 64
V = Vocab(text_size=1536, image_size=K, seg_size=len(SEG_CLASSES), image_grid=(8, 8))


def fake_encode(images: np.ndarray) -> np.ndarray:
    """Codes from the mean colour of each 8x8 cell, 2 bits per channel (a stand-in for the VQ)."""
    n = images.shape[0]
    cells = images.reshape(n, 8, 8, 8, 8, 3).mean(axis=(2, 4)).astype(int) // 64
    return cells[..., 0] * 16 + cells[..., 1] * 4 + cells[..., 2]


@pytest.fixture(scope="module")
def tok():
    return train_text_tokenizer(shapes_corpus(150), vocab_size=V.text_size)


def image(seed=0):
    return V.image_ids(np.random.default_rng(seed).integers(0, K, 64))


def test_every_task_has_paraphrases_and_some_held_out():
    for task in Task:
        if task is Task.CAPTION_INFILL:  # captioning by infilling has no instruction words
            assert len(PARAPHRASES[task]) == 1 and train_paraphrases(task) == [0]
            continue
        assert len(train_paraphrases(task)) >= 3 and len(heldout_paraphrases(task)) >= 1
        texts = [p.text for p in PARAPHRASES[task]]
        assert len(set(texts)) == len(texts)


def inputs_for(task: Task):
    seg = V.seg_ids(np.arange(64) % len(SEG_CLASSES))
    return {
        Task.T2I: ({"text": "a red circle"}, image(1)),
        Task.CAPTION: ({"image_ids": image()}, "a red circle"),
        Task.CAPTION_INFILL: ({"image_ids": image()}, "a red circle"),
        Task.VQA: ({"image_ids": image(), "text": "how many shapes are there?"}, "one"),
        Task.INFILL: ({"image_ids": image(), "region": rectangle(V, 2, 3, 4, 5), "text": "a star"}, image()),
        Task.EDIT: ({"image_ids": image(), "text": "make the circle blue"}, image(1)),
        Task.SEGMENT: ({"image_ids": image()}, seg),
        Task.SEG2IMG: ({"seg_ids": seg, "text": "a red circle"}, image(1)),
        Task.GROUNDED: ({"text": "a red circle", "boxes": [("red circle", (10, 20, 90, 100))]}, image(1)),
    }[task]


@pytest.mark.parametrize("task", list(Task))
def test_prompt_is_a_prefix_of_the_document_and_the_output_follows(task, tok):
    args, output = inputs_for(task)
    for p in range(len(PARAPHRASES[task])):
        head = prompt(task, V, tok, paraphrase=p, **args)
        doc = document(task, V, tok, output=output, paraphrase=p, **args)
        assert head[0] == V.eos and doc[-1] == V.eos
        assert np.array_equal(doc[: head.size], head)
        body = doc[head.size : -1]
        kind = output_spec(task)
        if kind == "text":
            assert tok.decode(V.to_bpe(body)) == output
        else:
            assert body.size == 64 and np.all((V.is_image if kind == "image" else V.is_seg)(body))
            assert head[-1] == V.brk  # a grid always starts right after a <break>
        parts = F.split_parts(V, doc)
        assert all(part.modality != "mixed" for part in parts) or task in (Task.CAPTION_INFILL, Task.INFILL)


def test_layouts(tok):
    img, img2 = image(), image(1)
    t = lambda s: list(V.text_ids(tok.encode(s)))  # noqa: E731
    # paraphrase 0 of t2i is the pretraining prompt itself
    assert list(prompt(Task.T2I, V, tok, text="a red circle")) == list(
        F.text_to_image_prompt(V, V.text_ids(tok.encode("a red circle"))))
    assert list(prompt(Task.CAPTION_INFILL, V, tok, image_ids=img)) == list(F.caption_prompt(V, img))
    assert list(prompt(Task.EDIT, V, tok, image_ids=img, text="make it blue")) == [
        V.eos, *t("Edit the image following the instruction"), V.brk, *img, V.brk, *t("make it blue"), V.brk]
    assert list(prompt(Task.VQA, V, tok, image_ids=img, text="how many?")) == [
        V.eos, *t("Question: how many?"), V.brk, *img, V.brk, *t("Answer:")]
    seg = V.seg_ids(np.zeros(64, int))
    assert list(prompt(Task.SEG2IMG, V, tok, seg_ids=seg)) == [
        V.eos, *t("Make an image from the segmentation map"), V.brk, *seg, V.brk]
    doc = document(Task.EDIT, V, tok, image_ids=img, text="make it blue", output=img2)
    assert np.array_equal(doc[-65:-1], img2)


def test_infill_prompt_holes_and_forced_ids(tok):
    img = image()
    region = rectangle(V, 1, 2, 3, 4)
    head = prompt(Task.INFILL, V, tok, image_ids=img, region=region)
    grid, cells = head[-65:-1], region.reshape(-1)
    assert np.all(grid[cells] == V.mask(HOLE_MASK))
    assert np.array_equal(grid[~cells], img[~cells])
    forced = infill_forced_ids(V, img, region)
    assert np.all(forced[cells] == -1) and np.array_equal(forced[~cells], img[~cells])
    bare = tok.decode(V.to_bpe(head[1:-66]))
    hinted_prompt = prompt(Task.INFILL, V, tok, image_ids=img, region=region, text="a star")
    hinted = tok.decode(V.to_bpe(hinted_prompt[1:-66]))
    assert bare == "Fill in the masked region" and hinted == "Fill in the masked region with a star"


def test_bad_inputs(tok):
    with pytest.raises(BadInputError, match="needs text"):
        prompt(Task.T2I, V, tok)
    with pytest.raises(BadInputError, match="image"):
        prompt(Task.SEGMENT, V, tok)
    with pytest.raises(BadInputError, match="64 image"):
        prompt(Task.CAPTION, V, tok, image_ids=image()[:10])
    with pytest.raises(BadInputError, match="segmentation"):
        prompt(Task.SEG2IMG, V, tok, seg_ids=image())
    with pytest.raises(BadInputError, match="region"):
        prompt(Task.INFILL, V, tok, image_ids=image(), region=np.zeros((8, 8), bool))
    with pytest.raises(BadInputError, match="paraphrases 0..4"):
        prompt(Task.T2I, V, tok, text="x", paraphrase=5)
    with pytest.raises(BadInputError, match="0 <= x0"):
        box_text([("circle", (10, 20, 5, 30))])
    with pytest.raises(BadInputError, match="text output"):
        document(Task.CAPTION, V, tok, image_ids=image(), output="")
    with pytest.raises(BadInputError, match="unknown task 'paint'"):
        prompt("paint", V, tok)
    with pytest.raises(BadInputError, match="not inside"):
        rectangle(V, 0, 0, 8, 2)
    assert box_text([("circle", (0, 1, 254, 255)), ("star", (3, 4, 5, 6))]) == (
        "circle at (0, 1) -> (254, 255) and star at (3, 4) -> (5, 6)")


# -- Shapes World instruction data ---------------------------------------------------------------
def test_vqa_answers_match_the_pixels():
    world = ShapesWorld("val")
    palette = {name: np.array(rgb) for name, rgb in COLORS.items()}
    checked = 0
    for i in range(40):
        scene = world.scene(i)
        img = render(scene)
        for q, a, kind in vqa_questions(scene):
            if q == "how many shapes are there?":
                assert a == ["zero", "one", "two", "three"][len(scene.objects)]
            if kind == "colour" and q.startswith("what colour is the shape"):
                o = next(o for o in scene.objects if q.endswith(f"{_where(o)}?"))
                cx, cy = o.center()
                rgb = img[int(cy * 64), int(cx * 64)].astype(int)
                assert min(palette, key=lambda c: np.abs(palette[c] - rgb).sum()) == a
                checked += 1
            if kind == "kind":
                o = next(o for o in scene.objects if q.endswith(f"{_where(o)}?"))
                cx, cy = o.center()
                assert class_mask(scene)[int(cy * 64), int(cx * 64)] == 1 + KINDS.index(a)
    assert checked > 40
    types = Counter(vqa_question(world.scene(i), np.random.default_rng(i))[2] for i in range(300))
    assert set(types) == {"count", "colour", "kind", "position", "size"} and min(types.values()) > 30


def _where(o):
    from training.data.shapes_text import canonical_position

    return canonical_position(o.row, o.col)


def test_box_region_covers_the_object():
    world = ShapesWorld("val")
    for i in range(20):
        s = world.sample(i)
        for k, box in enumerate(s.boxes):
            cells = box_region(V, box)
            one = type(s.scene)((s.scene.objects[k],), s.scene.background)
            covered = seg_grid(one, 8) > 0
            assert np.all(cells[covered])


@pytest.fixture(scope="module")
def data(tok):
    return InstructionData(V, tok, fake_encode, split="val", seed=0, cond_dropout=0.0)


def test_every_task_builds_deterministic_documents(data, tok):
    world = data.world
    for task in Task:
        for i in range(4):
            ex = data.example(task, i)
            assert np.array_equal(ex.ids, data.example(task, i).ids)
            assert ex.paraphrase in train_paraphrases(task)
            assert V.validate(ex.ids).size == ex.ids.size and ex.ids[0] == V.eos and ex.ids[-1] == V.eos
            assert ex.maskable == (task not in (Task.INFILL, Task.CAPTION_INFILL)) and not ex.dropped
            out = ex.ids[ex.prompt_len : -1]
            s = world.sample(i)
            if task in (Task.CAPTION, Task.CAPTION_INFILL):
                assert tok.decode(V.to_bpe(out)) == s.canonical
            if task is Task.SEGMENT:
                assert np.array_equal(V.to_classes(out), seg_grid(s.scene, 8).reshape(-1))
            if task in (Task.T2I, Task.INFILL, Task.SEG2IMG, Task.GROUNDED):
                assert np.array_equal(V.to_codes(out), fake_encode(s.image[None]).reshape(-1))
            if task is Task.EDIT:
                pair = world.edit_sample(i)
                assert np.array_equal(V.to_codes(out), fake_encode(pair.after.image[None]).reshape(-1))
                assert tok.decode(V.to_bpe(F.split_parts(V, ex.ids)[2].ids)) == pair.instruction
            if task is Task.VQA:
                answers = {a for _, a, _ in vqa_questions(s.scene)}
                assert tok.decode(V.to_bpe(out)) in answers


def test_heldout_paraphrase_mode(tok):
    data = InstructionData(V, tok, fake_encode, split="val", paraphrases="heldout")
    for task in Task:
        if task is not Task.CAPTION_INFILL:
            assert data.example(task, 0).paraphrase in heldout_paraphrases(task)
    with pytest.raises(BadInputError):
        InstructionData(V, tok, fake_encode, paraphrases="some")


def test_encoder_shape_is_checked(tok):
    data = InstructionData(V, tok, lambda x: np.zeros((len(x), 4, 4), int), split="val")
    with pytest.raises(BadInputError, match="shape"):
        data.example(Task.SEGMENT, 0)


def test_mixture_follows_weights_and_batches(data):
    mix = InstructionMixture(data, {"t2i": 3.0, "segment": 1.0, "vqa": 0.0}, seed=1)
    counts = Counter(mix.task(i) for i in range(2000))
    assert set(counts) == {Task.T2I, Task.SEGMENT}
    assert abs(counts[Task.T2I] / 2000 - 0.75) < 0.04
    assert [mix.example(i).ids.tolist() for i in range(5)] == [mix.example(i).ids.tolist() for i in range(5)]
    with pytest.raises(BadInputError):
        InstructionMixture(data, {"t2i": 0.0})


def test_condition_dropout_gives_the_guidance_prompts(tok):
    data = InstructionData(V, tok, fake_encode, split="val", cond_dropout=1.0)
    keep = InstructionData(V, tok, fake_encode, split="val", cond_dropout=0.0)
    for task in (Task.T2I, Task.GROUNDED, Task.EDIT):
        ex, full = data.example(task, 3), keep.example(task, 3)
        assert ex.dropped and not ex.maskable and not full.dropped and full.maskable
        assert np.array_equal(F.sequence(V, F.recover(V, ex.ids[1:-1])), full.ids)  # the same document
        head = ex.ids[: ex.prompt_len]
        if task is Task.EDIT:  # ... I <break> <mask:0> <break>, as the engine builds its guidance stream
            assert np.array_equal(head[:-2], full.ids[: head.size - 2])
            assert list(head[-2:]) == [V.mask(0), V.brk]
        else:
            assert list(head) == list(F.unconditional_image_prompt(V))
        out = ex.ids[ex.prompt_len : ex.prompt_len + 64]
        assert np.array_equal(out, full.ids[full.prompt_len : full.prompt_len + 64])
    rate = np.mean([InstructionData(V, tok, fake_encode, split="val").example(Task.T2I, i).dropped
                    for i in range(200)])
    assert 0.04 < rate < 0.18  # default 0.1


def test_folder_instruction_data(tmp_path, tok):
    from PIL import Image

    from training.data.folder import FolderDataset
    from training.data.instruction_data import FolderInstructionData

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "0.txt").write_text("a red barn")
    (tmp_path / "2.txt").write_text("a blue boat")
    data = FolderInstructionData(FolderDataset(tmp_path, size=64), V, tok, fake_encode, cond_dropout=0.0)
    assert len(data) == 2  # the uncaptioned image is left out
    examples = [data.example(Task.CAPTION, i) for i in range(2)]
    captions = {tok.decode(V.to_bpe(ex.ids[ex.prompt_len : -1])) for ex in examples}
    assert captions == {"a red barn", "a blue boat"}
    ex = data.example(Task.T2I, 1)
    assert np.array_equal(ex.ids, data.example(Task.T2I, 1).ids)
    with pytest.raises(BadInputError, match="no vqa"):
        data.example(Task.VQA, 0)
    with pytest.raises(BadInputError, match="segment"):
        InstructionMixture(data, {"t2i": 1.0, "segment": 1.0})
    mix = InstructionMixture(data, {"t2i": 1.0, "caption_infill": 1.0})
    assert {mix.example(i).task for i in range(20)} == {Task.T2I, Task.CAPTION_INFILL}
    # image infilling: the whole image is the output, a hole in the prompt, the caption as hint half the time
    hinted = 0
    for i in range(0, 16, 2):  # index % 2 == 0: the red barn
        ex = data.example(Task.INFILL, i)
        output = ex.ids[ex.prompt_len:-1]
        assert np.array_equal(output, data.example(Task.T2I, 0).ids[-len(output) - 1:-1])
        assert V.is_mask(ex.ids[:ex.prompt_len]).any()
        head = ex.ids[:ex.prompt_len]
        hinted += "a red barn" in tok.decode(V.to_bpe(head[V.is_text(head)]))
    assert 0 < hinted < 8
