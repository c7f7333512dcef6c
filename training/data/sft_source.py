"""The `shapes-sft` training source: the multi-task instruction mixture (engine/instructions.py)
over Shapes World — or a folder of captioned images — packed into fixed-length rows.

Registered with training/sources.py, so `tessera train sft` is the ordinary trainer with
`[data] kind = "shapes-sft"`. Like every source, a batch is a pure function of its arguments.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from engine.errors import BadInputError
from engine.formats import cm3_transform, loss_weights
from engine.image_tokenizer import ImageTokenizer
from engine.paths import default_image_tokenizer_dir, default_text_tokenizer_path
from engine.text_tokenizer import TextTokenizer
from engine.vocab import Vocab
from training.data.instruction_data import FolderInstructionData, InstructionData, InstructionMixture
from training.sources import register_source

# Default task mixture: generation-heavy, since images are most of the tokens to learn.
DEFAULT_WEIGHTS = {
    "t2i": 3.0, "caption": 1.0, "caption_infill": 1.0, "vqa": 1.5, "infill": 1.5, "edit": 1.5,
    "segment": 1.5, "seg2img": 1.0, "grounded": 1.0,
}
FOLDER_WEIGHTS = {"t2i": 3.0, "caption": 1.0, "caption_infill": 0.5, "infill": 1.0}
SPLITS = {"train": "train", "val": "val"}


@cache
def _tokenizers(image_tokenizer: str, text_tokenizer: str) -> tuple[ImageTokenizer, TextTokenizer]:
    return ImageTokenizer.load(image_tokenizer), TextTokenizer.load(text_tokenizer)


def make_vocab(image_tok: ImageTokenizer, text_tok: TextTokenizer, seg_size: int) -> Vocab:
    return Vocab(text_tok.size, image_tok.codebook_size, seg_size, tuple(image_tok.grid))


class PackedInstructionSource:
    """Rows of whole instruction documents, packed greedily (documents of 70-180 tokens would waste
    half of a padded row).

    Two layouts, compared by `tessera bench learn` (docs/benchmarks.md, "Learning efficiency"):
    - `loss = "all"`, `separate_docs = False` (the first design): documents run into each other, every
      token is a target (prompts, input images and the next document's opening included), and
      `cm3_prob` applies the CM3 transform to maskable documents, as in CM3Leon's SFT.
    - `loss = "output"`, `separate_docs = True` (the default): the loss covers each document's output
      and closing <eos> only (the prompt is given, not modelled: a dropped condition makes the output
      unconditional, which is what classifier-free guidance needs), and each document keeps its own
      positions and attention (the batch's fourth array, doc_ids), exactly as the engine runs it.
    - `loss = "document"`: the same outputs, each document's weighing the same in total (its tokens
      1/length each). Per token, a 2-token VQA answer got 0.5 % of the loss beside 65-token images
      (bench/mixture_shares.py); per document it gets its share of the mixture.

    `trained_with`: the tokenizers the documents were made with, by hash (training/components.py)."""

    trained_with: dict[str, dict[str, str]]

    def __init__(self, mixture: InstructionMixture, seq_len: int, seed: int, cm3_prob: float,
                 seg_classes: tuple[str, ...], loss: str = "output", separate_docs: bool = True) -> None:
        if loss not in ("output", "document", "all"):
            raise BadInputError(f"[data] loss must be \"output\", \"document\" or \"all\", not {loss!r}")
        if loss != "all" and cm3_prob > 0:
            raise BadInputError("[data] cm3_prob > 0 needs loss = \"all\" (a CM3 transform moves the output)")
        self.mixture, self.seq_len, self.seed, self.cm3_prob = mixture, seq_len, seed, cm3_prob
        self.loss, self.separate_docs = loss, separate_docs
        self.vocab = mixture.data.vocab
        self.vocab_size = self.vocab.size
        self.seg_classes = seg_classes
        self.tasks = [t.value for t, p in zip(mixture.tasks, mixture.p, strict=True) if p > 0]

    def _document(self, index: int) -> tuple[np.ndarray, int]:
        """(ids, where the output starts)."""
        example = self.mixture.example(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 7, index]))
        if example.maskable and rng.random() < self.cm3_prob:
            # keep the leading <eos> and the closing <eos> outside the transform
            body = cm3_transform(self.vocab, example.ids[1:-1], rng)
            return np.concatenate([[self.vocab.eos], body, [self.vocab.eos]]), 1
        return example.ids, example.prompt_len

    def batch(self, step: int, micro_step: int, rank: int, world_size: int, batch_size: int):
        v, width = self.vocab, self.seq_len + 1
        rows = np.full((batch_size, width), v.pad, dtype=np.int64)
        docs = np.zeros((batch_size, width), dtype=np.int64)
        output = np.zeros((batch_size, width), dtype=bool)  # tokens that are some document's output
        for i in range(batch_size):
            # the global row number: any split of a global batch over ranks and micro-steps is the same data
            row = (micro_step * world_size + rank) * batch_size + i
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, step, row]))
            used, n = 0, 0
            while True:
                doc, out_start = self._document(int(rng.integers(0, len(self.mixture.data))))
                if used + doc.size > width:
                    if not n:
                        raise BadInputError(f"an instruction document of {doc.size} tokens exceeds seq_len")
                    break
                rows[i, used: used + doc.size] = doc
                docs[i, used: used + doc.size] = n
                output[i, used + out_start: used + doc.size] = True
                used, n = used + doc.size, n + 1
            docs[i, used:] = n  # the padding is a document of its own
        inputs, targets = rows[:, :-1].copy(), rows[:, 1:].copy()
        weights = loss_weights(v, targets)
        if self.loss != "all":
            weights *= output[:, 1:]
        if self.loss == "document":
            weights = weights / _document_sums(weights, docs[:, 1:])
        if not self.separate_docs:
            return inputs, targets, weights
        return inputs, targets, weights, docs[:, :-1].copy()


def _document_sums(weights: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Each position's document total of `weights` (1 where it is 0: those positions weigh nothing)."""
    per_doc = np.zeros((len(docs), int(docs.max()) + 1))
    np.add.at(per_doc, (np.arange(len(docs))[:, None], docs), weights)
    totals = np.take_along_axis(per_doc, docs, axis=1)
    return np.where(totals > 0, totals, 1.0)


@register_source("shapes-sft")
def shapes_sft(
    split: str,
    seq_len: int,
    seed: int,
    weights: dict | None = None,
    folder: str | None = None,
    val_folder: str | None = None,
    image_tokenizer: str | None = None,
    text_tokenizer: str | None = None,
    cm3_prob: float = 0.0,
    cond_dropout: float = 0.1,
    loss: str = "output",
    separate_docs: bool = True,
) -> PackedInstructionSource:
    from training.components import record
    from training.data.shapes import SEG_CLASSES

    paths = {"image_tokenizer": str(image_tokenizer or default_image_tokenizer_dir()),
             "text_tokenizer": str(text_tokenizer or default_text_tokenizer_path())}
    image_tok, text_tok = _tokenizers(paths["image_tokenizer"], paths["text_tokenizer"])
    if split != "train" and val_folder:  # a held-out part of the folder (tessera train recipe folder)
        folder = val_folder
    vocab = make_vocab(image_tok, text_tok, len(SEG_CLASSES))
    data_seed = seed + (0 if split == "train" else 1_000_003)
    if folder:
        from training.data.folder import FolderDataset

        data = FolderInstructionData(FolderDataset(folder, size=image_tok.image_size), vocab, text_tok,
                                     image_tok.encode, seed=data_seed, cond_dropout=cond_dropout)
        weights = weights or FOLDER_WEIGHTS
    else:
        data = InstructionData(vocab, text_tok, image_tok.encode, split=SPLITS.get(split, split),
                               seed=data_seed, cond_dropout=cond_dropout)
        weights = weights or DEFAULT_WEIGHTS
    mixture = InstructionMixture(data, weights, seed=data_seed)
    source = PackedInstructionSource(mixture, seq_len, data_seed, cm3_prob, SEG_CLASSES, loss, separate_docs)
    source.trained_with = record(**paths)
    return source
