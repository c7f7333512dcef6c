"""Byte-level BPE text tokenizer (Hugging Face `tokenizers`, saved as `tokenizer.json`).

Byte-level means every string is first turned into its UTF-8 bytes, so any Unicode text
(emoji, CJK, control characters) encodes without an unknown token and decodes back exactly.
The ids returned here are raw BPE ids (0..size-1); `Vocab.text_ids` shifts them into the
shared id space. The tokenizer holds no special tokens: those live in `Vocab`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from engine.errors import BadInputError, BundleError
from engine.io import atomic_write_text

# Checked on load: a tokenizer.json that cannot reproduce this exactly is not byte-level.
_ROUND_TRIP_PROBE = "a red circle (12, 40) -> (80, 110)  é 中 😀 \x00\t\n"


def byte_level_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE pipeline (no normaliser, no prefix space, no specials)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        if self.decode(self.encode(_ROUND_TRIP_PROBE)) != _ROUND_TRIP_PROBE:
            raise BundleError("text tokenizer does not round-trip text exactly: it is not a byte-level BPE")

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        try:
            tok = Tokenizer.from_str(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BundleError(f"text tokenizer not found: {path}") from None
        except Exception as exc:  # tokenizers raises plain Exception on malformed JSON
            raise BundleError(f"cannot read text tokenizer {path}: {exc}") from None
        return cls(tok)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self._tok.to_str(pretty=False))

    @property
    def size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise BadInputError(f"text to encode must be a str, got {type(text).__name__}")
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        except Exception as exc:  # e.g. a lone surrogate that has no UTF-8 form
            raise BadInputError(f"cannot encode text {text[:40]!r}: {exc}") from None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.size]
        if bad:
            raise BadInputError(f"BPE id {bad[0]} is outside 0..{self.size - 1}")
        # A cut through a multi-byte character (a partial stream) decodes to U+FFFD, never raises.
        return self._tok.decode(ids, skip_special_tokens=False)
