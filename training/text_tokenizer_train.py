"""Train the byte-level BPE text tokenizer on the domain's text.

Shapes World corpus: for many scenes, the varied and canonical captions, every *training*
paraphrase of every instruction filled with that scene's text, the VQA questions and answers,
edit instructions and grounding texts; plus every number 0..255 as box coordinates are written.
Held-out paraphrases are left out on purpose: an instruction wording the model never trained on
should not get tokens of its own either (their embeddings would never have been trained).
Folder corpus: the captions of a folder dataset's images.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import pre_tokenizers, trainers

from engine.errors import BadInputError
from engine.instructions import OUTPUT, Task, prompt_texts, train_paraphrases
from engine.text_tokenizer import TextTokenizer, byte_level_tokenizer
from training.data.folder import FolderDataset
from training.data.instruction_data import grounded_boxes, grounded_caption, vqa_questions
from training.data.shapes import ShapesWorld, boxes, canonical_caption, caption, feasible_edits, make_edit


def number_texts() -> Iterator[str]:
    """Each of 0..255 in the two ways a box writes it: after '(' and after ', '."""
    for i in range(256):
        yield f"({i}, {255 - i}) -> ({(i * 7) % 256}, {(i * 13) % 256})"


def shapes_corpus(n_scenes: int = 20000, seed: int = 0) -> Iterator[str]:
    """The Shapes World text, scene by scene (see module doc). No image is rendered."""
    world = ShapesWorld("train", seed=seed)
    tasks = tuple(OUTPUT)
    for i in range(n_scenes):
        rng = world.rng(i, stream=7)
        scene = world.random_scene(rng)
        cap, canon = caption(scene, rng), canonical_caption(scene)
        yield cap
        yield canon
        for q, a, _ in vqa_questions(scene):  # tokenized apart in documents, so apart here too
            yield q
            yield a
        kinds = feasible_edits(scene, world.max_objects)
        edit = make_edit(scene, kinds[int(rng.integers(len(kinds)))], rng)[1]
        texts = {Task.T2I: cap, Task.VQA: vqa_questions(scene)[0][0], Task.INFILL: canon, Task.EDIT: edit,
                 Task.SEG2IMG: cap, Task.GROUNDED: grounded_caption(scene)}
        for task in tasks:
            ps = train_paraphrases(task)
            p = ps[int(rng.integers(len(ps)))]
            yield from prompt_texts(task, text=texts.get(task), paraphrase=p,
                                    boxes=grounded_boxes(scene, boxes(scene)))
    for _ in range(2):  # twice: a pair must be seen min_frequency (2) times to be merged
        yield from number_texts()


def folder_corpus(root: str | Path) -> Iterator[str]:
    """The captions of a folder dataset's readable images (training/data/folder.py decides which
    captions belong to which image: metadata.jsonl, then sidecar .txt files)."""
    dataset = FolderDataset(root)
    texts = [text for _, text in dataset.items if text.strip()]
    if not texts:
        raise BadInputError(f"no captioned images under {root} (metadata.jsonl 'text' or .txt sidecar files)")
    yield from texts


def train_text_tokenizer(texts: Iterable[str], vocab_size: int = 1024,
                         min_frequency: int = 2) -> TextTokenizer:
    """Byte-level BPE: the 256 byte symbols plus merges up to vocab_size (fewer if the corpus runs
    out of pairs seen min_frequency times)."""
    if vocab_size < 256:
        raise BadInputError(f"vocab size must be at least 256 (the byte alphabet), got {vocab_size}")
    tok = byte_level_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok)


def tokens_per_text(tok: TextTokenizer, texts: Iterable[str]) -> float:
    lengths = [len(ids) for ids in tok.encode_batch(list(texts))]
    return float(np.mean(lengths)) if lengths else 0.0
