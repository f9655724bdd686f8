"""Finding blocks and adapter sites in a backbone, and wrapping them (PEFT-style, no patching).

An adapter acts on the *input of a block's attention module*. In sequential pre-norm blocks
(LLaMA, Qwen2, Mistral, GPT-2, CLIP, SigLIP, ViT, DINOv2, Whisper) that input is exactly the
pre-attention norm's output, so this equals wrapping the norm; in parallel blocks whose single
norm also feeds the MLP (Phi, GPT-J) it adapts the attention path only, as LaVIN intends; in
post-norm blocks (wav2vec2/HuBERT base) it adapts the raw block input. The optional FFN site acts
on the input of the block's MLP. Convolutional blocks are adapted at their input, on channels.
"""

from __future__ import annotations

from torch import nn

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
FFN_NAMES = ("mlp", "feed_forward", "ffn", "intermediate", "fc1")


class SiteError(ValueError):
    """No block list or no attention/FFN module could be found; the message lists what exists."""


def find_blocks(model: nn.Module, num_blocks: int | None = None, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """The model's list of repeated blocks (decoder layers / encoder blocks).

    With ``path`` the list is taken from that submodule. Otherwise: the ModuleList of identical
    classes whose length is ``num_blocks`` (when given) holding the most parameters.
    """
    if path is not None:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            raise SiteError(f"{type(model).__name__} has no submodule {path!r}") from None
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            raise SiteError(f"{path!r} in {type(model).__name__} is a {type(blocks).__name__}, not a block list")
        return path, blocks
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(b) for b in module}) == 1:
            found.append((name, module))
    matching = [(n, m) for n, m in found if num_blocks is None or len(m) == num_blocks]
    if not matching:
        listed = ", ".join(f"{n} ({len(m)} x {type(m[0]).__name__})" for n, m in found) or "none"
        raise SiteError(
            f"no list of {num_blocks} identical blocks in {type(model).__name__}; block lists found: {listed}"
        )
    return max(matching, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def find_child(block: nn.Module, candidates: tuple[str, ...], override: str | None, what: str) -> str:
    """Name of the direct child of ``block`` that is the ``what`` module (attention or FFN)."""
    children = dict(block.named_children())
    if override is not None:
        if override not in children:
            raise SiteError(f"{type(block).__name__} has no child {override!r}; children: {', '.join(children)}")
        return override
    for name in candidates:
        if name in children:
            return name
    raise SiteError(
        f"cannot find the {what} module in {type(block).__name__} (looked for {', '.join(candidates)}; "
        f"children: {', '.join(children)}); set adapter.{'attention_module' if what == 'attention' else 'ffn_module'}"
    )


class AdaptedInput(nn.Module):
    """Wraps ``module`` so that ``adapter`` transforms its main input first.

    The main input is the ``hidden_states`` keyword if given, else the first positional argument.
    ``channel_dim`` names the feature axis of that input (-1 for tokens [B, N, C]; 1 for conv
    features [B, C, H, W], which are flattened to [B, H*W, C] for the adapter). Attribute reads
    that the wrapper does not know fall through to the wrapped module, so library code reading
    e.g. ``self_attn.layer_idx`` keeps working.
    """

    def __init__(self, module: nn.Module, adapter: nn.Module, channel_dim: int = -1) -> None:
        super().__init__()
        self.module = module
        self.adapter = adapter
        self.channel_dim = channel_dim

    def _adapt(self, x):
        if self.channel_dim == -1:
            return self.adapter(x)
        moved = x.movedim(self.channel_dim, -1)
        tokens = self.adapter(moved.reshape(moved.shape[0], -1, moved.shape[-1]))
        return tokens.reshape(moved.shape).movedim(-1, self.channel_dim)

    def forward(self, *args, **kwargs):
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = self._adapt(kwargs["hidden_states"])
        elif args:
            args = (self._adapt(args[0]), *args[1:])
        else:
            raise TypeError(f"{type(self.module).__name__} was called without an input to adapt")
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def wrap_child(parent: nn.Module, child_name: str, adapter: nn.Module, channel_dim: int = -1) -> AdaptedInput:
    """Replaces ``parent.<child_name>`` by an :class:`AdaptedInput` around it and returns the wrapper."""
    child = getattr(parent, child_name)
    if isinstance(child, AdaptedInput):
        raise SiteError(f"{type(parent).__name__}.{child_name} already has an adapter")
    wrapper = AdaptedInput(child, adapter, channel_dim)
    setattr(parent, child_name, wrapper)
    return wrapper
