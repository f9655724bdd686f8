"""Bottleneck adapters: LaVIN's mixture-of-modality adapter and the plain RepAdapter.

Both act on the last dimension of x [B, N, C] (conv features are moved channel-last by the site
wrapper) and contain a residual: y = x + s * up(dropout(down(x))). Up-projections start at zero,
so a fresh adapter is the identity. All parameters are trainable and kept in float32; the input
is cast to float32 and the output back to the input's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from cotune.adapters.routing import RoutingError, RoutingState


class GroupedUp(nn.Module):
    """E grouped up-projections h -> C (LaVIN's ``Conv1d(h, C, 1, groups=g)``, one per expert).

    ``weight`` [E, C, h/g]: output channel c of group c // (C/g) reads z[group * h/g : (group+1) * h/g];
    ``bias`` [E, C]. Both zero-initialised.
    """

    def __init__(self, hidden: int, width: int, groups: int, experts: int) -> None:
        super().__init__()
        if width % groups:
            raise ValueError(f"adapter groups {groups} do not divide the host width {width}")
        self.hidden, self.width, self.groups, self.experts = hidden, width, groups, experts
        self.weight = nn.Parameter(torch.zeros(experts, width, hidden // groups))
        self.bias = nn.Parameter(torch.zeros(experts, width))

    def forward(self, z: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        """z [B, N, h], mix [B, E] or [B, N, E] expert weights -> [B, N, C]."""
        g, per_in, per_out = self.groups, self.hidden // self.groups, self.width // self.groups
        zg = z.unflatten(-1, (g, per_in))  # [B, N, g, h/g]
        w = self.weight.view(self.experts, g, per_out, per_in)  # [E, g, C/g, h/g]
        if mix.dim() == 2:
            # One mixture per sample: fold experts into a per-sample projection (cheaper than E outputs).
            w_mix = torch.einsum("be,egok->bgok", mix, w)
            out = torch.einsum("bngk,bgok->bngo", zg, w_mix).flatten(-2)
            return out + (mix @ self.bias).unsqueeze(1)
        # Per-token mixtures: weight the tiny z per expert first ([B, N, g, E, h/g]) and contract
        # experts and hidden units in one grouped matmul, instead of E full-width outputs
        # [B, N, E, C] (for a conv encoder's early stages, N is 112 x 112 positions).
        mixed = zg.unsqueeze(-2) * mix[..., None, :, None]
        out = torch.einsum("bngek,egok->bngo", mixed, w).flatten(-2)
        return out + mix @ self.bias


class MMAdapter(nn.Module):
    """LaVIN's Mixture-of-Modality adapter (``RepAdapter_Router``), generalised to E experts.

    y = x + s * sum_e w_e (U_e z + b_e), z = Dropout(A x + a), w = softmax(router(m) / t).
    ``router`` selects m: ``modality`` (LLM side: the modality row's state via :class:`RoutingState`),
    ``per_token`` (each token's own state, w [B, N, E]), ``cls`` (x[:, 0]), ``mean`` (token mean) or
    ``constant`` (learned logits [E], no input). One weight vector per sample per layer except per_token.
    """

    def __init__(
        self,
        width: int,
        hidden: int = 8,
        groups: int = 2,
        experts: int = 2,
        temperature: float = 10.0,
        dropout: float = 0.1,
        scale: float = 1.0,
        router: str = "per_token",
        routing_state: RoutingState | None = None,
        layer_index: int | None = None,
    ) -> None:
        super().__init__()
        if router == "modality" and (routing_state is None or layer_index is None):
            raise ValueError("a modality-routed adapter needs the model's RoutingState and its layer index")
        self.router_kind, self.temperature, self.scale = router, temperature, scale
        self.routing_state, self.layer_index = routing_state, layer_index
        self.down = nn.Linear(width, hidden)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.dropout = nn.Dropout(dropout)
        self.up = GroupedUp(hidden, width, groups, experts)
        if router == "constant":
            self.router_logits = nn.Parameter(torch.zeros(experts))
        else:
            self.router = nn.Linear(width, experts)

    def extra_repr(self) -> str:
        return f"router={self.router_kind}, temperature={self.temperature}, scale={self.scale}"

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        """Expert weights for x [B, N, C]: [B, E] (or [B, N, E] for per_token)."""
        kind = self.router_kind
        if kind == "constant":
            return torch.softmax(self.router_logits / self.temperature, -1).expand(x.shape[0], -1)
        if kind == "per_token":
            return torch.softmax(self.router(x) / self.temperature, -1)
        if kind == "mean":
            return torch.softmax(self.router(x.mean(1)) / self.temperature, -1)
        if kind == "cls":
            return torch.softmax(self.router(x[:, 0]) / self.temperature, -1)
        state = self.routing_state
        if state.mode == "apply":
            return state.weights[self.layer_index].to(x.dtype)
        if state.mode == "compute":
            mix = torch.softmax(self.router(x[:, 0]) / self.temperature, -1)
            state.recorded[self.layer_index] = mix
            return mix
        raise RoutingError(
            f"MM-Adapter in LLM layer {self.layer_index} ran without routing weights: "
            "call CotuneModel.forward (or set the routing state) instead of the LLM directly"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, C] (any float dtype) -> [B, N, C] in x's dtype."""
        dtype = x.dtype
        h = x.to(self.down.weight.dtype)
        mix = self._mix(h)
        z = self.down(h)
        if self.router_kind != "modality" or self.routing_state.use_dropout:
            z = self.dropout(z)
        return (h + self.scale * self.up(z, mix)).to(dtype)


class RepAdapter(nn.Module):
    """Plain bottleneck adapter y = x + s * (U Dropout(A x + a) + b), grouped U, zero-initialised.

    Keeps the residual that LaVIN's ``RepAdapter`` dropped. Parameters: A [h, C], a [h], U [C, h/g], b [C].
    """

    def __init__(self, width: int, hidden: int = 8, groups: int = 2, dropout: float = 0.1, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(width, hidden)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        self.dropout = nn.Dropout(dropout)
        self.up = GroupedUp(hidden, width, groups, experts=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, C] -> [B, N, C] in x's dtype."""
        dtype = x.dtype
        h = x.to(self.down.weight.dtype)
        z = self.dropout(self.down(h))
        ones = h.new_ones(h.shape[0], 1)
        return (h + self.scale * self.up(z, ones)).to(dtype)
