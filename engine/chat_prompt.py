"""Prompts of imported chat models (Janus-Pro): their own text template and unconditional stream.

An imported bundle's config.json holds

    "prompt": {"template": "<|User|>: {prompt}\\n\\n<|Assistant|>:", "bos_id": 100000, "pad_id": 100002,
               "boi_id": 100016}

with raw text-tokenizer ids. The text->image prompt is `<bos> template(prompt) <boi>` and the
classifier-free-guidance stream is the same length with every token but the first and last replaced
by <pad> (how Janus was trained to drop the condition: transformers' JanusForConditionalGeneration
.generate and DeepSeek's own script build it the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import BundleError
from engine.text_tokenizer import TextTokenizer
from engine.vocab import Vocab


@dataclass(frozen=True)
class ChatPrompt:
    template: str
    bos_id: int
    pad_id: int
    boi_id: int

    @classmethod
    def from_config(cls, config: dict) -> ChatPrompt | None:
        """The bundle's prompt format, or None for a Tessera-trained bundle (it has none)."""
        entry = config.get("prompt")
        if entry is None:
            return None
        try:
            fmt = cls(str(entry["template"]), *(int(entry[k]) for k in ("bos_id", "pad_id", "boi_id")))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"the bundle's prompt format is malformed: {exc!r}") from None
        if "{prompt}" not in fmt.template:
            raise BundleError("the bundle's prompt template has no {prompt} placeholder")
        return fmt

    def image_prompts(self, vocab: Vocab, tokenizer: TextTokenizer, text: str
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(conditional, unconditional) Tessera ids of a text->image request."""
        body = tokenizer.encode(self.template.replace("{prompt}", text))
        cond = vocab.text_ids([self.bos_id, *body, self.boi_id])
        uncond = vocab.text_ids([self.bos_id, *[self.pad_id] * len(body), self.boi_id])
        return cond, uncond
