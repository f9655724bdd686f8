"""The word-mix connector: media tokens as convex mixtures of the LLM's own word embeddings."""

import pytest
import torch

import tiny
from cotune.config.model import ConnectorConfig
from cotune.connectors import CONNECTORS, WordMix

WORD_MIX_IMAGE = {
    "kind": "clip", "layers": [1, 2, 3], "reduce": "cls", "trainable": "frozen",
    "connector": {"type": "word-mix", "hidden": 16},
}


def build(root):
    return tiny.build(root, "llama", {"image": WORD_MIX_IMAGE}, trainable="adapter", adapter={"type": "mm_adapter"})


def test_tokens_are_convex_mixtures_of_the_llm_word_embeddings(tiny_root):
    model = build(tiny_root)
    connector = model.connectors["image"]
    assert isinstance(connector, WordMix) and CONNECTORS.get("word-mix") is WordMix
    words = model.llm.get_input_embeddings().weight
    features = torch.randn(2, 3, connector.proj_in.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        weights = connector.mixture(features)
        out = connector(features)
    assert weights.shape == (2, 3, words.shape[0]) and (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    torch.testing.assert_close(out, weights @ words)
    # a sharp mixture is the word itself: the LLM reads such a token exactly as that word
    with torch.no_grad():
        connector.log_scale.fill_(20.0)
        sharp = connector(features)
    nearest = words[connector.mixture(features).argmax(-1)]
    torch.testing.assert_close(sharp, nearest, atol=1e-4, rtol=0)


def test_word_embeddings_are_read_not_owned(tiny_root):
    model = build(tiny_root)
    connector = model.connectors["image"]
    own = {n for n, _ in connector.named_parameters()}
    assert own == {"proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias", "log_scale"}
    state = model.trainable_state_dict()
    assert not any("embed" in k for k in state if k.startswith("connector")), sorted(state)
    # the LLM's embeddings stay frozen and get no gradient; the connector's parameters do
    ids = tiny.encode(model, "what colour is the circle", {"image": 3})
    media = {"image": tiny.media_input("clip", 1, torch.Generator().manual_seed(1))}
    out = model(ids, torch.ones_like(ids), labels=ids, media=media)
    out.loss.backward()
    assert model.llm.get_input_embeddings().weight.grad is None
    for name, p in connector.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_unbound_connector_says_what_is_missing():
    connector = WordMix(ConnectorConfig(type="word-mix", hidden=4), 8, 6)
    with pytest.raises(RuntimeError, match="no vocabulary bound"):
        connector(torch.zeros(1, 2, 8))
