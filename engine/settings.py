"""The one set of image-generation defaults: the engine's methods, the CLI and the studio start from them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationSettings:
    cfg: float = 3.0  # classifier-free guidance scale (CM3Leon: 3-6)
    temperature: float = 1.0
    top_p: float = 0.9
    cdk_alpha: float | None = None  # contrastive top-k, with cdk_k (off by default)
    cdk_k: int | None = None
    # Retrieved documents prepended to a text->image prompt. On: with the default model they lift the quick
    # suite's compositional accuracy from 0.02 to 0.20 (docs/model-card.md), although the model never saw
    # them in training (retrieval-augmented *training* cost 0.88 nats at equal compute, docs/retrieval.md).
    retrieve: int = 2
    candidates: int = 2  # generated per request and re-ranked by the retriever (the studio's default)


DEFAULTS = GenerationSettings()
