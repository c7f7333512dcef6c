"""The retriever: a small bi-encoder (DPR/CLIP style) mapping captions and images into one
L2-normalised embedding space, trained with a symmetric InfoNCE loss and a learned temperature.

Text enters as UTF-8 bytes (ids 1..256, 0 = padding), not as the model's BPE ids: the retriever
is then one self-contained artifact that survives a retrained text tokenizer, and it reads any
string an artist types. A strided conv stem turns bytes into ~8-byte pieces before attention,
so sequences stay short (a 175-byte caption becomes 22 positions).

Images enter as uint8 (B, H, W, 3), exactly as the runtime holds them; scaling happens inside
the graph so the ONNX export needs no preprocessing code beside it. The image head flattens a
4x4 feature map instead of pooling it: Shapes World captions are about *where* things are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

PAD = 0  # byte b is id b + 1
BYTES_PER_POSITION = 8  # the text stem downsamples bytes 8x before attention


@dataclass(frozen=True)
class RetrieverConfig:
    dim: int = 128  # shared embedding dimension
    byte_dim: int = 64  # byte embedding width
    width: int = 128  # text trunk width
    text_layers: int = 2
    text_heads: int = 4
    max_bytes: int = 256  # longer captions are cut (Shapes World captions are <= ~180 bytes)
    image_size: int = 64
    patch: int = 4  # image stem: a patch x patch conv with the same stride
    channels: tuple[int, ...] = (48, 96, 128)  # stem width, then conv stages that each halve the side

    def __post_init__(self) -> None:
        if self.max_bytes % BYTES_PER_POSITION or self.width % self.text_heads:
            raise ValueError("max_bytes must be a multiple of 8 and width of text_heads")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RetrieverConfig:
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class Block(nn.Module):
    """Pre-norm transformer block with a key padding mask."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    def __init__(self, cfg: RetrieverConfig) -> None:
        super().__init__()
        w = cfg.width
        self.embed = nn.Embedding(257, cfg.byte_dim, padding_idx=PAD)
        # Zero padding of the convs equals the zero embedding of <pad>, and features are re-masked
        # after each conv, so a caption's embedding does not depend on how much its batch is padded.
        self.conv1 = nn.Conv1d(cfg.byte_dim, w, 8, stride=4, padding=2)  # overlapping 8-byte windows
        self.conv2 = nn.Conv1d(w, w, 3, stride=2, padding=1)
        self.pos = nn.Parameter(torch.zeros(cfg.max_bytes // BYTES_PER_POSITION, w))
        self.blocks = nn.ModuleList(Block(w, cfg.text_heads) for _ in range(cfg.text_layers))
        self.ln = nn.LayerNorm(w)
        self.head = nn.Linear(w, cfg.dim, bias=False)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) byte ids, L a multiple of 8 (engine.retriever.encode_bytes)."""
        n = (ids != PAD).sum(1, keepdim=True)  # bytes per caption, (B, 1)
        x = F.gelu(self.conv1(self.embed(ids).transpose(1, 2)))  # (B, W, L/4)
        n = (n + 3) // 4
        x = x * _length_mask(n, x.shape[-1])[:, None]
        x = F.gelu(self.conv2(x))  # (B, W, L/8)
        n = (n + 1) // 2
        keep = _length_mask(n, x.shape[-1])
        x = (x * keep[:, None]).transpose(1, 2) + self.pos[: x.shape[-1]]
        keep = keep.bool()
        for block in self.blocks:
            x = block(x, keep)
        x = self.ln(x) * keep[..., None]
        pooled = x.sum(1) / n.clamp(min=1)
        return F.normalize(self.head(pooled), dim=-1)


def _length_mask(n: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length) float: 1 for positions < n (n is (B, 1))."""
    return (torch.arange(length, device=n.device)[None] < n).float()


class ImageEncoder(nn.Module):
    def __init__(self, cfg: RetrieverConfig) -> None:
        super().__init__()
        c_in = cfg.channels[0]
        stem = nn.Conv2d(3, c_in, cfg.patch, stride=cfg.patch)
        layers: list[nn.Module] = [stem, nn.GroupNorm(8, c_in), nn.GELU()]
        for c in cfg.channels[1:]:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.GELU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = cfg.image_size // cfg.patch // 2 ** (len(cfg.channels) - 1)
        self.head = nn.Linear(c_in * side * side, cfg.dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: uint8 (B, H, W, 3) at the configured size."""
        x = images.permute(0, 3, 1, 2).float() * (1 / 127.5) - 1.0
        return F.normalize(self.head(self.features(x).flatten(1)), dim=-1)


class BiEncoder(nn.Module):
    def __init__(self, cfg: RetrieverConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text = TextEncoder(cfg)
        self.image = ImageEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def forward(self, ids: torch.Tensor | list[torch.Tensor], images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetric InfoNCE over a batch of matching (caption, image) pairs -> (loss, accuracy).

        ids may be a list of chunks (captions of similar length, in batch order): each chunk is
        padded only to its own longest caption, which is cheaper and gives the same embeddings."""
        t = torch.cat([self.text(c) for c in ids]) if isinstance(ids, list) else self.text(ids)
        i = self.image(images)
        logits = self.logit_scale.clamp(max=math.log(100.0)).exp() * t @ i.T
        labels = torch.arange(len(t), device=t.device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        acc = (logits.argmax(1) == labels).float().mean()
        return loss, acc
