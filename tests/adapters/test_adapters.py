"""Adapter maths: LaVIN's reference formulation, closed-form counts, identity at init, routing."""

import pytest
import torch
from torch import nn

from cotune.adapters import AdaptedInput, MMAdapter, RepAdapter, RoutingError, RoutingState


def lavin_reference(x, conv_a, conv_b, conv_d, router, temperature, scale):
    """LaVIN's RepAdapter_Router forward (dropout off), written with grouped Conv1d as in the reference."""
    weights = torch.softmax(router(x[:, 0]) / temperature, -1)
    h = x.transpose(1, 2)
    z = conv_a(h)
    y = conv_b(z) * scale * weights[:, 0, None, None] + conv_d(z) * scale * weights[:, 1, None, None] + h
    return y.transpose(1, 2)


def randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("width, hidden, groups", [(16, 8, 2), (24, 8, 4), (32, 4, 1)])
def test_mm_adapter_matches_lavin_conv_formulation(width, hidden, groups):
    adapter = MMAdapter(width, hidden, groups, experts=2, temperature=10.0, dropout=0.0, scale=1.0, router="cls")
    randomise(adapter)
    conv_a = nn.Conv1d(width, hidden, 1)
    conv_b = nn.Conv1d(hidden, width, 1, groups=groups)
    conv_d = nn.Conv1d(hidden, width, 1, groups=groups)
    with torch.no_grad():
        conv_a.weight.copy_(adapter.down.weight[:, :, None])
        conv_a.bias.copy_(adapter.down.bias)
        conv_b.weight.copy_(adapter.up.weight[0][:, :, None])
        conv_b.bias.copy_(adapter.up.bias[0])
        conv_d.weight.copy_(adapter.up.weight[1][:, :, None])
        conv_d.bias.copy_(adapter.up.bias[1])
    x = torch.randn(3, 5, width)
    expected = lavin_reference(x, conv_a, conv_b, conv_d, adapter.router, 10.0, 1.0)
    torch.testing.assert_close(adapter(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("width, hidden, groups, experts", [(4096, 8, 2, 2), (1024, 8, 2, 2), (5120, 8, 2, 2), (64, 16, 4, 3)])
def test_parameter_count_closed_form(width, hidden, groups, experts):
    adapter = MMAdapter(width, hidden, groups, experts, router="cls")
    expected = (width * hidden + hidden) + experts * (width * hidden // groups + width) + (experts * width + experts)
    assert sum(p.numel() for p in adapter.parameters()) == expected
    if (hidden, groups, experts) == (8, 2, 2):
        assert expected == 20 * width + 10  # LaVIN's per-block count
    constant = MMAdapter(width, hidden, groups, experts, router="constant")
    assert sum(p.numel() for p in constant.parameters()) == expected - experts * width  # router is E logits
    rep = RepAdapter(width, hidden, groups)
    assert sum(p.numel() for p in rep.parameters()) == width * hidden + hidden + width * hidden // groups + width


@pytest.mark.parametrize("router", ["per_token", "cls", "mean", "constant"])
def test_fresh_adapters_are_identity_and_keep_dtype(router):
    adapter = MMAdapter(16, router=router)
    x = torch.randn(2, 7, 16, dtype=torch.bfloat16)
    y = adapter(x)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, x)
    assert torch.equal(RepAdapter(16)(x), x)


def test_rep_adapter_keeps_residual():
    adapter = RepAdapter(16, dropout=0.0)
    randomise(adapter)
    x = torch.randn(2, 3, 16)
    z = adapter.down(x)
    up = adapter.up.weight[0]  # [C, h/g], groups of 8 channels read 4 hidden units each
    expected = x + torch.cat([z[..., :4] @ up[:8].T, z[..., 4:] @ up[8:].T], -1) + adapter.up.bias[0]
    torch.testing.assert_close(adapter(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("router", ["per_token", "cls", "mean"])
def test_encoder_routing_of_a_sample_does_not_depend_on_the_batch(router):
    # LaVIN's ViT router read batch element 0 for everyone (quirk 1); ours must not.
    adapter = MMAdapter(16, router=router, dropout=0.0)
    randomise(adapter)
    x = torch.randn(4, 6, 16)
    batched = adapter(x)
    for i in range(4):
        torch.testing.assert_close(adapter(x[i : i + 1]), batched[i : i + 1], atol=1e-6, rtol=1e-6)
    others = x.clone()
    others[1:] = torch.randn(3, 6, 16)
    torch.testing.assert_close(adapter(others)[0], batched[0], atol=1e-6, rtol=1e-6)


def test_modality_router_needs_routing_state():
    state = RoutingState(num_layers=1)
    adapter = MMAdapter(8, router="modality", routing_state=state, layer_index=0)
    with pytest.raises(RoutingError, match="without routing weights"):
        adapter(torch.randn(1, 2, 8))
    randomise(adapter)
    with state.computing(use_dropout=False) as recorded:
        adapter(torch.randn(2, 1, 8))
    weights = state.stacked(recorded)
    assert weights.shape == (1, 2, 2)
    with state.applying(weights):
        out = adapter(torch.randn(2, 5, 8))
    assert out.shape == (2, 5, 8)


def test_adapted_input_wraps_keyword_positional_and_conv_inputs():
    class Attn(nn.Module):
        layer_idx = 3

        def forward(self, hidden_states, scale=1.0):
            return hidden_states * scale

    adapter = RepAdapter(4, hidden=2, groups=1, dropout=0.0)
    randomise(adapter)
    wrapped = AdaptedInput(Attn(), adapter)
    x = torch.randn(2, 3, 4)
    torch.testing.assert_close(wrapped(x, scale=2.0), adapter(x) * 2.0)
    torch.testing.assert_close(wrapped(hidden_states=x), adapter(x))
    assert wrapped.layer_idx == 3  # attribute reads fall through to the wrapped module

    conv = nn.Conv2d(4, 4, 1)
    conv_wrapped = AdaptedInput(conv, adapter, channel_dim=1)
    image = torch.randn(2, 4, 3, 5)
    tokens = image.flatten(2).transpose(1, 2)
    expected = conv(adapter(tokens).transpose(1, 2).reshape(2, 4, 3, 5))
    torch.testing.assert_close(conv_wrapped(image), expected, atol=1e-6, rtol=1e-6)


def test_per_token_mixture_equals_each_expert_weighted_per_token():
    """y = x + s * sum_e w_e(token) * (U_e z + b_e), U_e grouped, written expert by expert."""
    adapter = MMAdapter(16, hidden=8, groups=2, experts=3, router="per_token", dropout=0.0, scale=0.7)
    randomise(adapter)
    x = torch.randn(2, 5, 16, requires_grad=True)
    w = torch.softmax(adapter.router(x) / adapter.temperature, -1)  # [B, N, E]
    z = adapter.down(x)
    expected = x.clone()
    for e in range(3):
        up = adapter.up.weight[e]  # [C, h/g]: channels 0-7 read z[:4], channels 8-15 read z[4:]
        out_e = torch.cat([z[..., :4] @ up[:8].T, z[..., 4:] @ up[8:].T], -1) + adapter.up.bias[e]
        expected = expected + 0.7 * w[..., e, None] * out_e
    got = adapter(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    grads = torch.autograd.grad(got.square().sum(), [x, *adapter.parameters()])
    references = torch.autograd.grad(expected.square().sum(), [x, *adapter.parameters()])
    for g, r in zip(grads, references):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
