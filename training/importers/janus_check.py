"""`tessera import janus ... --check`: the imported bundle against transformers' reference, same weights.

For each fixed prompt both sides decode the image greedily with classifier-free guidance (the
reference with JanusForConditionalGeneration.generate, the bundle with the engine's decoding loop on
its ONNX graphs); then

    max_abs_logit_diff         the bundle's logits at every step (both streams) against the reference's
                               teacher-forced logits over the same tokens
    greedy_image_token_match   the share of image tokens both sides chose alike (1.0: identical images)
    max_abs_pixel_diff         the bundle's VQ decoder against the reference's on the same codes, in
                               0-255 pixel steps
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PROMPTS = ("a red circle above a blue square", "A dog running in the rain", "a photo of a cat on a sofa")
CFG_SCALE = 5.0  # transformers' default for Janus image generation


def _to_pixels(x: np.ndarray) -> np.ndarray:
    """float NCHW in [-1, 1] -> uint8-valued NHWC, as engine.image_tokenizer and Janus's processor round."""
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).transpose(0, 2, 3, 1)


def check(hf_dir: str | Path, bundle_dir: str | Path, prompts=PROMPTS, cfg: float = CFG_SCALE) -> dict:
    import torch
    from transformers import GenerationConfig, JanusForConditionalGeneration

    from engine.bundle import Bundle
    from engine.chat_prompt import ChatPrompt
    from engine.decode import image_span, start
    from engine.errors import BadInputError
    from engine.image_tokenizer import ImageTokenizer
    from engine.sampling import Argmax, ClassifierFreeGuidance, Sampler
    from engine.text_tokenizer import TextTokenizer

    bundle = Bundle.load(bundle_dir)
    vocab, fmt = bundle.vocab, ChatPrompt.from_config(bundle.config)
    if fmt is None:
        raise BadInputError(f"{bundle_dir} is not an imported Janus bundle (its config has no prompt format)")
    text_tok = TextTokenizer.load(bundle.text_tokenizer_path)
    image_tok = ImageTokenizer.load(bundle.image_tokenizer_dir)
    backend = bundle.backend("cpu")
    ref = JanusForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    gen = GenerationConfig(do_sample=False, guidance_scale=cfg, bos_token_id=fmt.bos_id,
                           pad_token_id=fmt.pad_id, generation_kwargs={"boi_token_id": fmt.boi_id})
    n_tokens = vocab.image_tokens_per_image
    lo, hi = vocab.image_offset, vocab.seg_offset
    worst_logit, worst_pixel, same, total = 0.0, 0.0, 0, 0
    for text in prompts:
        cond, uncond = fmt.image_prompts(vocab, text_tok, text)
        ids = torch.from_numpy(vocab.to_bpe(cond))[None]
        with torch.no_grad():
            want = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_mode="image",
                                generation_config=gen).numpy()[0]
        # the bundle: the engine's loop, keeping every step's raw logits
        stream, seen = start(backend, cond, uncond, 1), list[np.ndarray]()
        sampler = Sampler([ClassifierFreeGuidance(cfg)], Argmax())

        def keep(logits, sampler=sampler, seen=seen):
            seen.append(logits[:, lo:hi].copy())
            return sampler(logits)

        *_, last = image_span(stream, vocab, keep)
        got = vocab.to_codes(last.tokens[0])
        same += int((got == want).sum())
        total += n_tokens
        # the reference's logits over the bundle's tokens, both streams, teacher-forced
        with torch.no_grad():
            rows = torch.from_numpy(np.stack([vocab.to_bpe(cond), vocab.to_bpe(uncond)]))
            codes = torch.from_numpy(got[:-1])[None].expand(2, -1)
            embeds = torch.cat([ref.get_input_embeddings()(rows),
                                ref.prepare_embeddings_for_image_generation(codes)], 1)
            hidden = ref.model.language_model(inputs_embeds=embeds).last_hidden_state[:, len(cond) - 1:]
            expect = ref.model.generation_head(hidden).numpy()  # (2, n_tokens, K)
        mine = np.stack(seen, axis=1)  # (2, n_tokens, K)
        worst_logit = max(worst_logit, float(np.abs(mine - expect).max()))
        with torch.no_grad():
            ref_px = _to_pixels(ref.model.vqmodel.decode(torch.from_numpy(got)[None]).numpy())
        our_px = image_tok.decode(got.reshape(vocab.image_grid))[None].astype(np.float64)
        worst_pixel = max(worst_pixel, float(np.abs(our_px - ref_px).max()))
    return {"precision": bundle.config["import"]["precision"], "prompts": len(prompts),
            "image_tokens": n_tokens, "cfg": cfg, "max_abs_logit_diff": worst_logit,
            "greedy_image_token_match": same / total, "max_abs_pixel_diff": worst_pixel}
