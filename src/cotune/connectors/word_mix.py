"""``word-mix``: media tokens as mixtures of the LLM's own word embeddings.

Each selected feature f gives a query q = W2 SiLU(W1 f) (LaVIN's neck shape), scores against every
input word embedding e_v of the LLM, and leaves as the convex mixture sum_v softmax(q . e_v / tau) e_v.
The LLM thus reads each media token as a weighted choice of words: a frozen LLM already knows
what to do with "red" or "circle" in its context (copy it, compare it with the question's words),
whereas an unconstrained neck output must first be learned into a region the LLM can use. The
word embeddings are read from the LLM at every call (not copied, not trained here, not saved with
the connector); the query layers and the log-temperature are the trainable parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cotune.config.model import ConnectorConfig


class WordMix(nn.Module):
    """Linear(D_enc, hidden) -> SiLU -> Linear(hidden, D_llm) -> softmax over the vocabulary -> mixture of embeddings."""

    def __init__(self, config: ConnectorConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        hidden = config.hidden or 128
        self.proj_in = nn.Linear(in_dim, hidden)
        self.act = nn.SiLU()
        self.proj_out = nn.Linear(hidden, out_dim)
        for layer in (self.proj_in, self.proj_out):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        # log(1/tau), scores scaled by 1/sqrt(D_llm) at 0
        self.log_scale = nn.Parameter(torch.zeros(()))
        self._vocabulary: tuple[nn.Embedding, ...] = ()  # a tuple: the LLM's module is not registered here

    def num_tokens(self, n: int) -> int:
        return n

    def bind_vocabulary(self, embeddings: nn.Embedding) -> None:
        """Reads the word embeddings [V, D_llm] from ``embeddings`` (the LLM's input embeddings)."""
        self._vocabulary = (embeddings,)

    def mixture(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, D_enc] -> word weights [B, N, V] (each row sums to 1)."""
        if not self._vocabulary:
            raise RuntimeError("word-mix: no vocabulary bound (the model builder binds the LLM's input embeddings)")
        words = self._vocabulary[0].weight
        query = self.proj_out(self.act(self.proj_in(features)))
        scores = query.to(words.dtype) @ words.t() * (self.log_scale.exp() / math.sqrt(words.shape[1]))
        return scores.float().softmax(-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [B, N, D_enc] -> [B, N, D_llm], each token a convex mixture of word embeddings."""
        words = self._vocabulary[0].weight if self._vocabulary else None
        weights = self.mixture(features)
        return (weights.to(words.dtype) @ words).to(self.proj_out.weight.dtype)
