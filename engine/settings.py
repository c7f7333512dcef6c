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
    # Retrieved documents prepended to the prompt. Off: at this scale they cost 0.88 nats of loss at equal
    # compute (docs/retrieval.md, docs/architecture.md); the retriever still re-ranks the candidates.
    retrieve: int = 0
    candidates: int = 2  # generated per request and re-ranked by the retriever (the studio's default)


DEFAULTS = GenerationSettings()
