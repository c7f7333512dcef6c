"""The transformer's configuration and presets, without torch: the CLI lists the presets and a bundle's
config.json is checked with it where torch is not installed (engine/nn/transformer.py builds the model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from engine.errors import BadInputError


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    n_layer: int
    n_head: int
    d_model: int
    max_seq_len: int
    mlp_ratio: float = 4.0
    grid_rows: int = 0  # the image grid for cell embeddings; 0 x 0 = none (absolute positions only)
    grid_cols: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len", "grid_rows", "grid_cols"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise BadInputError(f"ModelConfig.{name} must be an integer, got {value!r}")
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise BadInputError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.grid_rows < 0 or self.grid_cols < 0 or (self.grid_rows == 0) != (self.grid_cols == 0):
            raise BadInputError(f"grid_rows and grid_cols must both be positive or both 0, got "
                                f"{self.grid_rows} x {self.grid_cols}")
        if self.d_model % self.n_head:
            raise BadInputError(f"d_model {self.d_model} is not divisible by n_head {self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_ff(self) -> int:
        return int(self.mlp_ratio * self.d_model)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise BadInputError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


# Paper vocabulary: 56,320 text + 8,192 image codes + our 20 specials (no segmentation tokens).
# Head counts are not in the paper: we use head_dim 64.
PAPER_VOCAB = 20 + 56320 + 8192
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(vocab_size=256, n_layer=2, n_head=4, d_model=64, max_seq_len=128),
    # The default. vocab_size is a placeholder: training takes it from the data source's Vocab.
    "shapes": ModelConfig(vocab_size=2048, n_layer=6, n_head=4, d_model=256, max_seq_len=512),
    "cm3leon-350m": ModelConfig(
        vocab_size=PAPER_VOCAB, n_layer=24, n_head=16, d_model=1024, max_seq_len=4096
    ),
    "cm3leon-760m": ModelConfig(
        vocab_size=PAPER_VOCAB, n_layer=24, n_head=24, d_model=1536, max_seq_len=4096
    ),
    "cm3leon-7b": ModelConfig(vocab_size=PAPER_VOCAB, n_layer=32, n_head=64, d_model=4096, max_seq_len=4096),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise BadInputError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig.from_dict({**PRESETS[name].to_dict(), **overrides})
