"""The maths of a merge: a linear adapter folded into the linear layers that read its output.

In eval mode (dropout off) a bottleneck adapter is affine in its input x [.., C]:

    y = x + s * (U_w (A x + a) + b_w),   U_w = sum_e w_e U_e,  b_w = sum_e w_e b_e

for expert weights w (RepAdapter: one expert, w = 1). A linear layer z = W y + b0 [out] that reads
y therefore equals

    z = W_w x + b_w'   with   W_w = W + P_w A,  P_w = s W U_w [out, h],  b_w' = b0 + s W (U_w a + b_w).

P_w A is a rank-h update, so a merged directory stores the factors (A, P_w, shift) per layer and
the folded weights are rebuilt from the backbone's own W when loading. Expert weights that depend
on the sample's modality give one weight set per distinct w; :class:`ModalityLinear` holds them
and picks each sample's set from the model's routing state. No parameter here is trainable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from cotune.adapters.bottleneck import GroupedUp, MMAdapter, RepAdapter
from cotune.adapters.routing import RoutingError, RoutingState

#: Expert routers whose weights do not depend on the adapter's input (the folded set is fixed).
FOLDABLE_ROUTERS = ("modality", "constant")


@dataclass
class AdapterAffine:
    """An adapter as x -> x + up_s (down x) + shift_s, in float32, with the scale s folded in.

    down [h, C] (A, its bias a goes into shift); up [S, C, h] (s U_w per set); shift [S, C];
    set_of_row: weight set per modality row (len K), or None when one set serves every sample.
    """

    down: torch.Tensor
    up: torch.Tensor
    shift: torch.Tensor
    set_of_row: list[int] | None


@dataclass
class FoldFactors:
    """What a merged directory stores for one folded layer: W_s = W + up[s] @ down, b_s = b0 + shift[s].

    down [h, in], up [S, out, h], shift [S, out] (float32); set_of_row as in :class:`AdapterAffine`.
    """

    down: torch.Tensor
    up: torch.Tensor
    shift: torch.Tensor
    set_of_row: list[int] | None

    def tensors(self, path: str) -> dict[str, torch.Tensor]:
        out = {f"{path}.fold_down": self.down, f"{path}.fold_up": self.up, f"{path}.fold_shift": self.shift}
        if self.set_of_row is not None:
            out[f"{path}.fold_rows"] = torch.tensor(self.set_of_row)
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], path: str) -> "FoldFactors":
        try:
            rows = tensors.get(f"{path}.fold_rows")
            return cls(tensors[f"{path}.fold_down"], tensors[f"{path}.fold_up"], tensors[f"{path}.fold_shift"],
                       None if rows is None else rows.tolist())
        except KeyError as err:
            raise KeyError(f"folded layer {path}: factor {err} is missing from the merged directory") from None


def dense_up(up: GroupedUp) -> torch.Tensor:
    """The grouped up-projections as dense matrices [E, C, h] (block diagonal over the groups)."""
    g, per_in, per_out = up.groups, up.hidden // up.groups, up.width // up.groups
    blocks = up.weight.detach().float().view(up.experts, g, per_out, per_in)
    return torch.stack([torch.block_diag(*blocks[e]) for e in range(up.experts)])


def _sets(mixes: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Distinct rows of mixes [K, E] -> (sets [S, E], set index of each row)."""
    sets: list[torch.Tensor] = []
    rows: list[int] = []
    for mix in mixes:
        match = next((i for i, s in enumerate(sets) if torch.equal(s, mix)), None)
        if match is None:
            sets.append(mix)
            match = len(sets) - 1
        rows.append(match)
    return torch.stack(sets), rows


def adapter_affine(adapter: nn.Module, mixes: torch.Tensor | None = None) -> AdapterAffine:
    """The eval-mode affine map of a RepAdapter or MMAdapter.

    ``mixes`` [K, E]: expert weights per modality row, required for a ``modality``-routed adapter
    (ignored otherwise). Raises ValueError for adapters whose weights depend on the input.
    """
    if isinstance(adapter, RepAdapter):
        set_mix, rows = torch.ones(1, 1), None
    elif isinstance(adapter, MMAdapter) and adapter.router_kind == "constant":
        set_mix, rows = torch.softmax(adapter.router_logits.detach().float() / adapter.temperature, -1)[None], None
    elif isinstance(adapter, MMAdapter) and adapter.router_kind == "modality":
        if mixes is None:
            raise ValueError(f"modality-routed adapter of LLM layer {adapter.layer_index} needs its routing weights per modality")
        set_mix, rows = _sets(mixes.detach().float().cpu())
        if len(set_mix) == 1:
            rows = None
    else:
        kind = getattr(adapter, "router_kind", type(adapter).__name__)
        raise ValueError(f"router {kind!r} is input-dependent (or the adapter is not linear); it cannot be folded")
    device = adapter.down.weight.device
    set_mix = set_mix.to(device)
    up, up_bias = dense_up(adapter.up), adapter.up.bias.detach().float()  # [E, C, h], [E, C]
    mixed_up = torch.einsum("se,ech->sch", set_mix, up)  # U_w per set
    down_bias = adapter.down.bias.detach().float()
    shift = adapter.scale * (mixed_up @ down_bias + set_mix @ up_bias)
    return AdapterAffine(adapter.down.weight.detach().float(), adapter.scale * mixed_up, shift, rows)


def unsupported_reason(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot absorb an adapter on its input (None: it can)."""
    if isinstance(layer, (nn.Linear, Conv1D)):
        return None
    if isinstance(layer, nn.Conv2d):
        if layer.kernel_size != (1, 1) or layer.padding != (0, 0) or layer.groups != 1:
            return (f"{type(layer).__name__}(kernel {layer.kernel_size}, padding {layer.padding}, groups {layer.groups}) "
                    "mixes neighbouring positions or channel groups; only 1x1 convolutions without padding fold")
        return None
    return f"{type(layer).__name__} is not a linear layer"


def linear_matrix(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W [out, in], b0 [out] or None) of a Linear, transformers Conv1D or 1x1 Conv2d, in float32."""
    if isinstance(layer, Conv1D):  # y = x @ weight + bias, weight [in, out]
        weight = layer.weight.t()
    elif isinstance(layer, nn.Conv2d):
        weight = layer.weight[:, :, 0, 0]
    else:
        weight = layer.weight
    bias = None if layer.bias is None else layer.bias.detach().float()
    return weight.detach().float(), bias


def fold_factors(affine: AdapterAffine, layer: nn.Module) -> FoldFactors:
    """The factors that fold ``affine`` into ``layer`` (which reads the adapter's output)."""
    weight, _bias = linear_matrix(layer)
    up = weight @ affine.up  # [out, in] @ [S, in, h] -> [S, out, h]
    shift = affine.shift @ weight.t()  # [S, in] @ [in, out] -> [S, out]
    return FoldFactors(affine.down.clone(), up, shift, affine.set_of_row)


def folded_layer(layer: nn.Module, factors: FoldFactors, selection: "ModalitySelection | None") -> nn.Module:
    """A layer equal to ``layer`` applied after the adapter: a plain Linear / 1x1 Conv2d with bias
    for one weight set, else a :class:`ModalityLinear` (which needs the model's ``selection``)."""
    reason = unsupported_reason(layer)
    if reason is not None:
        raise ValueError(reason)
    weight, bias = linear_matrix(layer)
    device, dtype = layer.weight.device, layer.weight.dtype
    down, up, shift = (t.to(device=device, dtype=torch.float32) for t in (factors.down, factors.up, factors.shift))
    if up.shape[1] != weight.shape[0] or down.shape[1] != weight.shape[1]:
        raise ValueError(f"fold factors {tuple(up.shape)} x {tuple(down.shape)} do not fit a {tuple(weight.shape)} layer")
    weights = (weight + up @ down).to(dtype)  # [S, out, in]
    biases = (shift if bias is None else bias + shift).to(dtype)  # [S, out]
    if len(weights) == 1:
        if isinstance(layer, nn.Conv2d):
            out = nn.Conv2d(layer.in_channels, layer.out_channels, 1, stride=layer.stride, bias=True, device=device, dtype=dtype)
            out.weight.data.copy_(weights[0][:, :, None, None])
        else:
            out = nn.Linear(weight.shape[1], weight.shape[0], bias=True, device=device, dtype=dtype)
            out.weight.data.copy_(weights[0])
        out.bias.data.copy_(biases[0])
        return out.requires_grad_(False)
    if isinstance(layer, nn.Conv2d) or selection is None or factors.set_of_row is None:
        raise ValueError("several weight sets need a token layer and the model's modality selection")
    return ModalityLinear(weights, biases, factors, selection)


class ModalitySelection:
    """The modality row each sample of the current forward uses, read from the routing state.

    A merged model's ``compute_routing`` returns one-hot rows [L, B, K]; every
    :class:`ModalityLinear` asks this object (owned by the model) for the rows, which are read once
    per routing tensor, so cached decoding pays for it once per ``generate`` call, not per token.
    """

    def __init__(self, routing_state: RoutingState) -> None:
        self.routing_state = routing_state
        self._key: torch.Tensor | None = None
        self._rows: list[int] = []

    def rows(self, batch: int) -> list[int]:
        state = self.routing_state
        if state.mode != "apply" or state.weights is None:
            raise RoutingError(
                "a merged per-modality layer ran without a modality selection: call the merged CotuneModel "
                "(or cotune.model.generate), not its LLM directly"
            )
        if state.weights is not self._key:  # holding the tensor keeps its identity unique
            self._key, self._rows = state.weights, state.weights[0].argmax(-1).tolist()
        if len(self._rows) != batch:
            raise RoutingError(f"modality selection holds {len(self._rows)} samples, the layer got {batch}")
        return self._rows


class ModalityLinear(nn.Module):
    """A linear layer with one folded weight set per distinct routing: x [B, ..., in] -> [B, ..., out].

    ``weight`` [S, out, in], ``bias`` [S, out] (frozen); ``set_of_row`` [K]: weight set of each
    modality row. A batch whose samples share one set runs one matmul with that set. A mixed batch
    runs the most common set on every sample and corrects the others by the rank-h difference
    W_s - W_a = (up_s - up_a) down, so it still reads one full weight matrix, not one per set.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, factors: FoldFactors, selection: ModalitySelection) -> None:
        super().__init__()
        set_of_row = factors.set_of_row
        if set_of_row is None or max(set_of_row) >= len(weight) or len(factors.up) != len(weight):
            raise ValueError(f"set_of_row {set_of_row} does not index the {len(weight)} weight sets")
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        # Factors for mixed batches (tiny: h columns); not part of the state dict.
        self.register_buffer("down", factors.down.to(weight), persistent=False)
        self.register_buffer("up", factors.up.to(weight), persistent=False)
        self.set_of_row = list(set_of_row)
        self.selection = selection
        self.in_features, self.out_features = weight.shape[2], weight.shape[1]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sets={len(self.weight)}, set_of_row={self.set_of_row}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sets = [self.set_of_row[row] for row in self.selection.rows(x.shape[0])]
        anchor = max(sorted(set(sets)), key=sets.count)
        out = F.linear(x, self.weight[anchor], self.bias[anchor])
        others = sorted(set(sets) - {anchor})
        if not others:
            return out
        z = F.linear(x, self.down)  # [B, ..., h]
        for s in others:
            index = torch.tensor([i for i, t in enumerate(sets) if t == s], device=x.device)
            delta = F.linear(z[index], self.up[s] - self.up[anchor], self.bias[s] - self.bias[anchor])
            out[index] = out[index] + delta
        return out
