"""The `shapes-sft` training source: the multi-task instruction mixture (engine/instructions.py)
over Shapes World — or a folder of captioned images — packed into fixed-length rows.

Registered with training/sources.py, so `tessera train sft` is the ordinary trainer with
`[data] kind = "shapes-sft"`. Like every source, a batch is a pure function of its arguments.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from engine.errors import BadInputError
from engine.formats import cm3_transform, pack
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
FOLDER_WEIGHTS = {"t2i": 3.0, "caption": 1.0, "caption_infill": 1.0}
SPLITS = {"train": "train", "val": "val"}


@cache
def _tokenizers(image_tokenizer: str, text_tokenizer: str) -> tuple[ImageTokenizer, TextTokenizer]:
    return ImageTokenizer.load(image_tokenizer), TextTokenizer.load(text_tokenizer)


def make_vocab(image_tok: ImageTokenizer, text_tok: TextTokenizer, seg_size: int) -> Vocab:
    return Vocab(text_tok.size, image_tok.codebook_size, seg_size, tuple(image_tok.grid))


class PackedInstructionSource:
    """Rows of whole instruction documents, packed greedily (documents of 70-180 tokens would waste
    half of a padded row). `cm3_prob` applies the CM3 transform to maskable documents, as in
    CM3Leon's SFT, which keeps the CM3 objective on instruction + output."""

    def __init__(self, mixture: InstructionMixture, seq_len: int, seed: int, cm3_prob: float,
                 seg_classes: tuple[str, ...]) -> None:
        self.mixture, self.seq_len, self.seed, self.cm3_prob = mixture, seq_len, seed, cm3_prob
        self.vocab = mixture.data.vocab
        self.vocab_size = self.vocab.size
        self.seg_classes = seg_classes
        self.tasks = [t.value for t, p in zip(mixture.tasks, mixture.p, strict=True) if p > 0]

    def _document(self, index: int) -> np.ndarray:
        example = self.mixture.example(index)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 7, index]))
        if example.maskable and rng.random() < self.cm3_prob:
            # keep the leading <eos> and the closing <eos> outside the transform
            body = cm3_transform(self.vocab, example.ids[1:-1], rng)
            return np.concatenate([[self.vocab.eos], body, [self.vocab.eos]])
        return example.ids

    def batch(self, step: int, micro_step: int, rank: int, world_size: int, batch_size: int):
        rows = []
        for i in range(batch_size):
            # the global row number: any split of a global batch over ranks and micro-steps is the same data
            row = (micro_step * world_size + rank) * batch_size + i
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, step, row]))
            docs, used = [], 0
            while True:
                doc = self._document(int(rng.integers(0, len(self.mixture.data))))
                if used + doc.size > self.seq_len + 1:
                    if not docs:
                        raise BadInputError(f"an instruction document of {doc.size} tokens exceeds seq_len")
                    break
                docs.append(doc)
                used += doc.size
            rows.append(np.concatenate(docs))
        return pack(self.vocab, rows, self.seq_len, rows=batch_size)


@register_source("shapes-sft")
def shapes_sft(
    split: str,
    seq_len: int,
    seed: int,
    weights: dict | None = None,
    folder: str | None = None,
    image_tokenizer: str | None = None,
    text_tokenizer: str | None = None,
    cm3_prob: float = 0.25,
    cond_dropout: float = 0.1,
) -> PackedInstructionSource:
    from training.data.shapes import SEG_CLASSES

    image_tok, text_tok = _tokenizers(
        str(image_tokenizer or default_image_tokenizer_dir()),
        str(text_tokenizer or default_text_tokenizer_path()),
    )
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
    mixture = InstructionMixture(data, weights, seq_len=seq_len, seed=data_seed)
    return PackedInstructionSource(mixture, seq_len, data_seed, cm3_prob, SEG_CLASSES)
