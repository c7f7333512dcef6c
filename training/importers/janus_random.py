"""Random Janus checkpoints in transformers' format, written like the real ones (safetensors, a fast
tokenizer with Janus's special tokens): the importer's tests and benchmark run on these, since nothing
is downloaded here. Shapes: "tiny" (tests: milliseconds per step), "small", and "1b" (Janus-Pro-1B's
language model, VQ model and generation head; the SigLIP encoder, which the importer never reads,
is shrunk to save memory and disk)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.io import atomic_write_text

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
SPECIAL_TOKENS = [BOS, EOS, PAD, "<|User|>", "<|Assistant|>", "<begin_of_image>", "<end_of_image>",
                  "<image_placeholder>"]
SMALL_VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2.0,
                    projection_dim=64)
SHAPES = {
    # vq: 32 ch, one 2x upsampling -> 4x4 codes make an 8x8 picture
    "tiny": dict(
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=320, max_position_embeddings=256),
        vision=dict(SMALL_VISION, image_size=32, patch_size=8, num_image_tokens=16),
        vq=dict(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
                channel_multiplier=[1, 1], num_res_blocks=1, projection_dim=64, image_token_embed_dim=64)),
    "small": dict(
        text=dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=8, vocab_size=102400, max_position_embeddings=4096),
        vision=dict(SMALL_VISION, image_size=384, patch_size=16, num_image_tokens=576, projection_dim=512),
        vq=dict(embed_dim=8, num_embeddings=16384, latent_channels=64, base_channels=32,
                channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=1, projection_dim=512,
                image_token_embed_dim=512)),
    "1b": dict(
        text=dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
                  num_key_value_heads=16, vocab_size=102400, max_position_embeddings=16384,
                  rms_norm_eps=1e-6),
        vision=dict(SMALL_VISION, image_size=384, patch_size=16, num_image_tokens=576, projection_dim=2048),
        vq=dict(embed_dim=8, num_embeddings=16384, latent_channels=256, base_channels=128,
                channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=2, projection_dim=2048,
                image_token_embed_dim=2048)),
}


def write_tokenizer(out: Path) -> int:
    """A byte-level BPE with Janus's special tokens (their names as in DeepSeek's tokenizer); its size."""
    from tokenizers import pre_tokenizers, trainers

    from engine.text_tokenizer import byte_level_tokenizer

    tok = byte_level_tokenizer()
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIAL_TOKENS)
    corpus = ["a red circle above a blue square", "a photo of a cat on a sofa", "A dog running in the rain"]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    tok.save(str(out / "tokenizer.json"))
    config = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "boi_token": "<begin_of_image>",
              "tokenizer_class": "LlamaTokenizerFast"}
    atomic_write_text(out / "tokenizer_config.json", json.dumps(config, indent=2))
    return tok.get_vocab_size()


def write_random_janus(out: str | Path, shape: str = "tiny", seed: int = 0, dtype: str = "float32",
                       head_std: float = 0.5) -> Path:
    """save_pretrained of a random JanusForConditionalGeneration plus tokenizer files. head_std widens the
    image head's weights so that greedy decoding is not a string of near-ties (transformers' init gives
    nearly flat logits)."""
    import torch
    from transformers import JanusConfig, JanusForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = write_tokenizer(out)
    dims: dict[str, Any] = SHAPES[shape]
    torch.manual_seed(seed)
    config = JanusConfig(text_config=dict(model_type="llama", **dims["text"]), vision_config=dims["vision"],
                         vq_config=dims["vq"], image_token_id=SPECIAL_TOKENS.index("<image_placeholder>"))
    if size > dims["text"]["vocab_size"]:
        raise ValueError(f"the tokenizer's {size} ids do not fit the {shape} shape's text vocabulary")
    model = JanusForConditionalGeneration(config).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.model.generation_head.vision_head.weight, std=head_std)
    model.to(getattr(torch, dtype)).save_pretrained(str(out))
    return out
