"""VQ autoencoder: images -> a grid of discrete codes -> images (VQ-VAE / VQGAN / LlamaGen line).

Two layouts (VQConfig.arch): "patch" (the shipped one) embeds each 8x8 patch with one strided conv,
runs residual 3x3 blocks on the code grid and writes pixels back with a 1x1 conv + pixel shuffle;
"conv" is the classic VQGAN pyramid of strided / transposed convs. On two CPU cores the patch layout
trains ~4x faster per step and reaches a given PSNR in far fewer steps (docs/tokenizer.md).

The quantizer follows LlamaGen: codes are l2-normalised low-dimensional vectors looked up by cosine
similarity, which keeps the whole codebook in play. The codebook follows the encoder by EMA
(VQ-VAE-2 / SoundStream). Two more guards against codebook collapse: spherical k-means initialisation
from real encoder outputs (`init_codebook`) and dead-code restart (codes unused for `dead_after`
steps are re-seeded from current encoder outputs).
Written here instead of depending on vector-quantize-pytorch: ~250 auditable lines, no extra
dependency, and every op exports to ONNX (argmax, embedding lookup).

Pixels are float32 NCHW in [-1, 1]; codes are int64 (N, h, w) in raster order.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VQConfig:
    image_size: int = 64
    codebook_size: int = 1024
    code_dim: int = 8  # low-dimensional l2-normalised codes (LlamaGen uses 8)
    # len(channels) = log2(downsample). conv: width after each stride-2 step, 64px -> 32 -> 16 -> 8.
    # patch: only the last entry is used, as the width of every layer on the code grid.
    channels: tuple[int, ...] = (128, 128, 128)
    stem_channels: int = 32  # conv only: width at full resolution (first and last conv)
    res_blocks: int = 2  # residual blocks at the code grid, in encoder and decoder each
    up_blocks: int = 1  # extra decoder blocks (conv: after each upsampling but the last)
    pixel_channels: int = 0  # patch only: width of the full-resolution head after the shuffle (0: none)
    pixel_blocks: int = 1  # patch only: residual blocks in that head
    beta: float = 0.25  # commitment weight
    dead_after: int = 25  # training steps without use before a code is re-seeded
    decay: float = 0.95  # EMA decay of the codebook
    # "conv": strided convs down to the grid and back. "patch": one 8x8 patch embedding, all other
    # layers at the code grid, pixel-shuffle out — GEMM-shaped work that trains several times faster
    # on a CPU (convolution backward at 32-64 px with 32 channels runs at a few GFLOP/s there).
    arch: str = "patch"
    # Kernel of the patch encoder's residual blocks on the code grid. 3 lets a cell's code see its
    # neighbours (the first shipped tokenizer: an empty background took 13-25 codes). 1 makes each code
    # a function of its own 8x8 patch only: identical content -> identical code, one code per plain
    # background (docs/tokenizer.md "Codes per cell"). The decoder keeps 3x3 kernels either way.
    encoder_kernel: int = 3

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if self.arch not in ("conv", "patch"):
            raise ValueError(f"VQConfig.arch must be 'conv' or 'patch', got {self.arch!r}")
        if self.encoder_kernel not in (1, 3):
            raise ValueError(f"VQConfig.encoder_kernel must be 1 or 3, got {self.encoder_kernel}")
        if self.encoder_kernel != 3 and self.arch != "patch":
            raise ValueError("VQConfig.encoder_kernel 1 (codes per cell) needs arch='patch'")
        if self.pixel_channels < 0 or self.pixel_blocks < 0:
            raise ValueError("VQConfig.pixel_channels and pixel_blocks must be >= 0")
        if self.pixel_channels and self.arch != "patch":
            raise ValueError("VQConfig.pixel_channels (a full-resolution decoder head) needs arch='patch'")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not divisible by {self.downsample}")

    @property
    def downsample(self) -> int:
        return 2 ** len(self.channels)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.downsample
        return side, side

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> VQConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


# No normalisation layers: GroupNorm normalises each image's features over space, which on flat
# synthetic scenes erases absolute colour (measured: a GroupNorm model reconstructed every shape in
# one average hue after 300 steps).
class ResBlock(nn.Module):
    def __init__(self, c: int, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(c, c, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class PatchEncoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        c = cfg.channels[-1]
        layers: list[nn.Module] = [nn.Conv2d(3, c, cfg.downsample, stride=cfg.downsample)]
        layers += [ResBlock(c, cfg.encoder_kernel) for _ in range(cfg.res_blocks)]
        layers += [nn.SiLU(), nn.Conv2d(c, cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PixelHead(nn.Module):
    """A residual refinement at full resolution, after the pixel shuffle. The code-grid trunk writes
    each 8x8 patch as a linear function of its own cell's features, so an edge that crosses a cell
    border comes out blocky; 3x3 convs on pixels see across the borders. The last conv starts at
    zero: a new head is the identity, so it can be added to a trained decoder (decoder refinement)."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.inp = nn.Conv2d(3, channels, 3, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(channels) for _ in range(blocks)])
        self.out = nn.Conv2d(channels, 3, 3, padding=1)
        for p in self.out.parameters():  # weight and bias
            nn.init.zeros_(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.out(F.silu(self.blocks(self.inp(x))))


class PatchDecoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        c, ds = cfg.channels[-1], cfg.downsample
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, c, 3, padding=1)]
        layers += [ResBlock(c) for _ in range(cfg.res_blocks + cfg.up_blocks)]
        layers += [nn.SiLU(), nn.Conv2d(c, 3 * ds * ds, 1), nn.PixelShuffle(ds)]
        self.net = nn.Sequential(*layers)
        self.head = PixelHead(cfg.pixel_channels, cfg.pixel_blocks) if cfg.pixel_channels else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.net(z)
        return x if self.head is None else self.head(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = (cfg.stem_channels, *cfg.channels)
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.SiLU(), nn.Conv2d(cin, cout, 4, stride=2, padding=1)]
        layers += [ResBlock(widths[-1]) for _ in range(cfg.res_blocks)]
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], cfg.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = (cfg.stem_channels, *cfg.channels)[::-1]
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, widths[0], 3, padding=1)]
        layers += [ResBlock(widths[0]) for _ in range(cfg.res_blocks)]
        last = len(widths) - 2
        for i, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            # Transposed conv k4 s2: 2.25x cheaper than nearest-upsample + 3x3 conv at the output size.
            layers += [nn.SiLU(), nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)]
            if i < last:
                layers += [ResBlock(cout) for _ in range(cfg.up_blocks)]
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclass
class QuantOut:
    quantized: torch.Tensor  # (N, D, h, w), straight-through
    codes: torch.Tensor  # (N, h, w) int64
    loss: torch.Tensor  # codebook + beta * commitment
    flat: torch.Tensor = field(repr=False)  # (N*h*w, D) normalised encoder outputs, detached


class Quantizer(nn.Module):
    """Cosine-similarity VQ with an EMA codebook (unit vectors), commitment loss, straight-through."""

    codebook: torch.Tensor
    embed_sum: torch.Tensor
    last_used: torch.Tensor
    steps: torch.Tensor

    def __init__(self, codebook_size: int, code_dim: int, beta: float, dead_after: int, decay: float):
        super().__init__()
        self.beta, self.dead_after, self.decay = beta, dead_after, decay
        codebook = F.normalize(torch.randn(codebook_size, code_dim), dim=1)
        self.register_buffer("codebook", codebook)
        # EMA of the sum of encoder outputs assigned to each code; its direction is the code.
        self.register_buffer("embed_sum", codebook.clone())
        # Training step at which each code was last chosen; `steps` counts training forwards.
        self.register_buffer("last_used", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @property
    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=1)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """(N, D, h, w) raw encoder output -> (N, h, w) codes (nearest by cosine similarity)."""
        sim = torch.einsum("ndhw,kd->nkhw", F.normalize(z, dim=1), self.normalized_codebook)
        return sim.argmax(dim=1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, h, w) codes -> (N, D, h, w) unit vectors."""
        return F.embedding(codes, self.normalized_codebook).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor) -> QuantOut:
        z = F.normalize(z, dim=1)
        codes = self.lookup(z)
        q = self.embed(codes)
        loss = self.beta * F.mse_loss(z, q.detach())  # commitment; the codebook itself follows by EMA
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        if self.training:
            with torch.no_grad():
                self.steps += 1
                self.last_used[codes.unique()] = self.steps
                self._ema_update(flat, codes.flatten())
        return QuantOut(z + (q - z).detach(), codes, loss, flat)

    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        # EMA codebooks track the encoder much faster than gradient-learned ones (VQ-VAE-2, SoundStream);
        # unchosen codes keep their direction and are re-seeded by restart_dead_codes.
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.codebook.copy_(F.normalize(self.embed_sum, dim=1))

    @torch.no_grad()
    def init_codebook(self, vectors: torch.Tensor, iters: int = 10, seed: int = 0) -> None:
        """Spherical k-means on encoder outputs (M, D), M >= codebook_size; sets the codebook."""
        k = self.codebook.shape[0]
        x = F.normalize(vectors.float(), dim=1)
        if x.shape[0] < k:
            raise ValueError(f"k-means init needs >= {k} vectors, got {x.shape[0]}")
        gen = torch.Generator().manual_seed(seed)
        centers = _kmeans_plus_plus(x, k, gen)
        for _ in range(iters):
            assign = (x @ centers.T).argmax(dim=1)
            sums = torch.zeros_like(centers).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k)
            empty = counts == 0
            centers = torch.where(empty[:, None], centers, F.normalize(sums, dim=1))
            if empty.any():  # an empty cluster takes a random data point
                centers[empty] = x[torch.randint(x.shape[0], (int(empty.sum()),), generator=gen)]
        self.set_codebook(centers)
        self.last_used.fill_(int(self.steps))

    @torch.no_grad()
    def set_codebook(self, vectors: torch.Tensor) -> None:
        self.codebook.copy_(F.normalize(vectors, dim=1))
        self.embed_sum.copy_(self.codebook)

    @torch.no_grad()
    def restart_dead_codes(self, flat: torch.Tensor, seed: int) -> int:
        """Re-seed codes unused for `dead_after` steps with random current encoder outputs.

        Returns how many codes were restarted. Call after the optimizer step.
        """
        dead = (self.steps - self.last_used) >= self.dead_after
        n = int(dead.sum())
        if n == 0:
            return 0
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randint(flat.shape[0], (n,), generator=gen)
        noise = 0.01 * torch.randn(n, flat.shape[1], generator=gen)  # split duplicates of one vector
        self.codebook[dead] = F.normalize(flat[pick] + noise, dim=1).to(self.codebook.dtype)
        self.embed_sum[dead] = self.codebook[dead]
        self.last_used[dead] = self.steps  # a grace period before it can be declared dead again
        return n


def _kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding with cosine distance: spread-out starts, so Lloyd steps don't stall with
    two centres in one cluster and none in another."""
    centers = torch.empty(k, x.shape[1], dtype=x.dtype)
    centers[0] = x[torch.randint(x.shape[0], (1,), generator=gen)]
    dist = (1 - x @ centers[0]).clamp_min(0)
    for i in range(1, k):
        weights = dist if dist.sum() > 0 else torch.ones_like(dist)
        centers[i] = x[torch.multinomial(weights, 1, generator=gen)]
        dist = torch.minimum(dist, (1 - x @ centers[i]).clamp_min(0))
    return centers


@dataclass
class VQOut:
    recon: torch.Tensor
    codes: torch.Tensor
    vq_loss: torch.Tensor
    flat: torch.Tensor = field(repr=False)


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        patch = cfg.arch == "patch"
        self.encoder = PatchEncoder(cfg) if patch else Encoder(cfg)
        self.decoder = PatchDecoder(cfg) if patch else Decoder(cfg)
        self.quantizer = Quantizer(cfg.codebook_size, cfg.code_dim, cfg.beta, cfg.dead_after, cfg.decay)

    def forward(self, x: torch.Tensor) -> VQOut:
        q = self.quantizer(self.encoder(x))
        return VQOut(self.decoder(q.quantized), q.codes, q.loss, q.flat)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, h, w) int64 codes (argmax, deterministic)."""
        return self.quantizer.lookup(self.encoder(x))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, h, w) int64 codes -> (N, 3, H, W) in about [-1, 1]."""
        return self.decoder(self.quantizer.embed(codes))

    @torch.no_grad()
    def encoder_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised encoder outputs as (N*h*w, D) rows, for k-means init."""
        z = F.normalize(self.encoder(x), dim=1)
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


class EncoderGraph(nn.Module):
    """ONNX view: images (N, 3, H, W) float in [-1, 1] -> codes (N, h, w) int64."""

    def __init__(self, model: VQModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.quantizer.lookup(self.model.encoder(images))


class DecoderGraph(nn.Module):
    """ONNX view: codes (N, h, w) int64 -> images (N, 3, H, W) float, about [-1, 1]."""

    def __init__(self, model: VQModel):
        super().__init__()
        self.model = model

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.model.decoder(self.model.quantizer.embed(codes))
