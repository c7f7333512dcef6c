"""The CM3Leon-style transformer: init, the three decoding paths, the weighted loss, planning figures."""

from __future__ import annotations

import json

import pytest
import torch

from engine.cli import main
from engine.errors import BadInputError
from engine.nn.transformer import (
    PRESETS,
    ModelConfig,
    Transformer,
    get_preset,
    model_info,
    weighted_cross_entropy,
)

torch.set_num_threads(1)


def random_model(seed: int = 0, **overrides) -> Transformer:
    """A tiny model with every weight random (the zero-initialised outputs would hide bugs)."""
    torch.manual_seed(seed)
    model = Transformer(get_preset("tiny", **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def test_init_follows_cm3leon():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, n_layer=2, n_head=4, d_model=128, max_seq_len=256))
    params = dict(model.named_parameters())
    assert all(p.dim() == 2 for p in params.values()), "no biases, no LayerNorm affine parameters"
    zero = [n for n in params if n.endswith("proj.weight")] + ["lm_head.weight"]
    assert len(zero) == 2 * 2 + 1
    for name in zero:
        assert torch.count_nonzero(params[name]) == 0, name
    wpe = params["wpe.weight"]
    assert 0.00015 < wpe.std() < 0.00025 and wpe.abs().max() <= 3 * 0.0002
    for name in ("wte.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc.weight"):
        w = params[name]
        assert w.abs().max() <= 0.018 + 1e-7, name  # cut at 3 sigma
        assert 0.0045 < w.std() < 0.0062, name  # std 0.006 before the cut (~0.0053 after)
    assert model.lm_head.weight.data_ptr() != model.wte.weight.data_ptr(), "lm_head is untied"


def test_zero_initialised_model_trains_every_weight():
    """Behaviour, not one machine's numerics: from the zero head's uniform start, every weight moves and a
    fixed batch repeated is overfit to a quarter of its starting loss (~110 steps here; the cap is 400)."""
    torch.manual_seed(0)
    model = Transformer(get_preset("tiny"))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 256, (4, 32))
    losses: list[float] = []
    while len(losses) < 400 and (not losses or losses[-1] > losses[0] / 4):
        _, loss = model(ids[:, :-1], targets=ids[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(256.0)).item(), abs=1e-4)  # zero head: uniform
    assert losses[-1] <= losses[0] / 4, (
        f"not overfit in {len(losses)} steps: {losses[0]:.3f} -> {losses[-1]:.3f}")
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, start[n])]
    assert not unchanged, f"never updated: {unchanged}"


def test_forward_equals_cache_decode_equals_step_chain():
    model = random_model()
    ids = torch.randint(0, 256, (3, 40))
    with torch.no_grad():
        full, _ = model(ids)
        # static cache: a 9-token prefill then one token at a time
        model.setup_cache(max_batch=3, max_len=64)
        chunks = [model(ids[:, :9], input_pos=torch.arange(9))[0]]
        for t in range(9, 40):
            chunks.append(model(ids[:, t : t + 1], input_pos=torch.tensor([t]))[0])
        cached = torch.cat(chunks, dim=1)
        # functional past -> present: prefill from an empty past, then single tokens
        past_k, past_v = model.empty_past(3)
        logits, past_k, past_v = model.step(ids[:, :5], past_k, past_v)
        steps = [logits]
        for t in range(5, 40):
            logits, past_k, past_v = model.step(ids[:, t : t + 1], past_k, past_v)
            steps.append(logits)
        stepped = torch.cat(steps, dim=1)
    cfg = model.config
    assert past_k.shape == (cfg.n_layer, 3, cfg.n_head, 40, cfg.head_dim) == past_v.shape
    assert full.abs().max() > 1.0  # a meaningful comparison, not zeros against zeros
    assert (full - cached).abs().max() < 1e-4
    assert (full - stepped).abs().max() < 1e-4


def test_cache_reuse_for_a_smaller_batch_and_errors():
    model = random_model()
    ids = torch.randint(0, 256, (1, 12))
    with torch.no_grad():
        full, _ = model(ids)
        with pytest.raises(BadInputError, match="setup_cache"):
            model(ids, input_pos=torch.arange(12))
        model.setup_cache(max_batch=4)  # larger batch than used, default length
        out, _ = model(ids, input_pos=torch.arange(12))
    assert (full - out).abs().max() < 1e-4
    with pytest.raises(BadInputError, match="max_seq_len"):
        model(torch.zeros(1, model.config.max_seq_len + 1, dtype=torch.long))
    with pytest.raises(BadInputError, match="exceeds"):
        model.setup_cache(1, model.config.max_seq_len + 1)


def test_weighted_loss_and_sentinels_carry_no_loss():
    model = random_model()
    ids = torch.randint(20, 256, (2, 17))
    inputs, targets = ids[:, :-1].clone(), ids[:, 1:].clone()
    sentinel = 3  # <mask:0>
    targets[0, 4] = targets[1, 9] = targets[1, 10] = sentinel
    weights = (targets != sentinel).float()
    logits, loss = model(inputs, targets=targets, loss_weights=weights)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    expected = (ce * weights.flatten()).sum() / weights.sum()
    assert torch.allclose(loss, expected, rtol=1e-6)
    # what the sentinel positions hold changes neither the loss nor the gradient
    model.zero_grad()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    other = targets.clone()
    other[weights == 0] = 100
    model.zero_grad()
    _, loss2 = model(inputs, targets=other, loss_weights=weights)
    loss2.backward()
    assert loss2.item() == loss.item()
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
    # an explicit normaliser replaces sum(w); an all-zero-weight batch gives 0, not NaN
    _, loss3 = model(inputs, targets=targets, loss_weights=weights, loss_norm=2 * weights.sum())
    assert torch.allclose(loss3, loss / 2)
    assert weighted_cross_entropy(logits, targets, torch.zeros_like(weights)).item() == 0.0


def test_paper_presets_on_meta_device():
    sizes = {name: model_info(PRESETS[name]) for name in ("cm3leon-350m", "cm3leon-760m", "cm3leon-7b")}
    assert 6.5e9 < sizes["cm3leon-7b"]["params"] < 7.5e9
    assert sizes["cm3leon-350m"]["params"] < sizes["cm3leon-760m"]["params"] < sizes["cm3leon-7b"]["params"]
    for info in sizes.values():
        assert info["head_dim"] == 64 and info["max_seq_len"] == 4096
        assert info["flops_per_token"] > 6 * info["matmul_params"]
    # 16 bytes per parameter of optimizer states alone
    assert sizes["cm3leon-7b"]["train_memory_gb_bf16"] > 16 * sizes["cm3leon-7b"]["params"] / 1e9


def test_model_info_cli_prints_one_json_object(capsys):
    assert main(["model", "info", "cm3leon-760m", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_layer"] == 24 and info["d_model"] == 1536
    assert {"params", "flops_per_token", "train_memory_gb_bf16"} <= set(info)


def test_config_validation():
    with pytest.raises(BadInputError, match="divisible"):
        ModelConfig(vocab_size=10, n_layer=1, n_head=3, d_model=64, max_seq_len=8)
    with pytest.raises(BadInputError, match="unknown model preset"):
        get_preset("gpt-5")
    with pytest.raises(BadInputError, match="unknown model config keys"):
        get_preset("tiny", n_layers=3)
