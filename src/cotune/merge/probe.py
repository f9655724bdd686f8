"""Finding what a merge may fold, on a probe batch run through the real model.

An adapter site (an :class:`~cotune.adapters.sites.AdaptedInput`) transforms the input of a
wrapped module (the attention, an FFN or a conv block). Folding it is exact when that module reads
its input *only* through linear layers (q/k/v projections, a fused ``c_attn``, 1x1 convolutions).
Module code is not parsed: a probe forward records which leaf layers receive the adapted tensor
itself, then calls the wrapped module again with a perturbed input while those layers are pinned
to the original one. Equal outputs prove that nothing else (a norm, a residual, a view feeding
another layer) reads the input; any difference makes the site unfoldable, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from cotune.adapters.bottleneck import MMAdapter, RepAdapter
from cotune.adapters.sites import AdaptedInput
from cotune.merge.fold import FOLDABLE_ROUTERS, unsupported_reason
from cotune.model.fused import CotuneModel

PROBE_TEXT_TOKENS = 6


@dataclass
class Site:
    """One adapter site: the wrapper at ``path`` (its parent's child ``child``) in ``component``
    (``llm`` or ``encoder.<name>``). After analysis ``consumers`` holds the layers that read the
    adapted input, or ``reason`` says why the site stays unmerged."""

    path: str
    wrapper: AdaptedInput
    parent: nn.Module
    child: str
    component: str
    consumers: list[nn.Module] = field(default_factory=list)
    reason: str | None = None

    @property
    def adapter(self) -> nn.Module:
        return self.wrapper.adapter

    def unwrap(self) -> None:
        """Puts the wrapped module back in the wrapper's place (the adapter is dropped)."""
        setattr(self.parent, self.child, self.wrapper.module)


def find_sites(model: nn.Module) -> list[Site]:
    """Every adapter site of ``model`` in module order, classified by its adapter's router."""
    sites = []
    for path, module in model.named_modules():
        if not isinstance(module, AdaptedInput):
            continue
        parent_path, _, child = path.rpartition(".")
        parts = path.split(".")
        component = "llm" if parts[0] == "llm" else f"encoder.{parts[1]}"
        site = Site(path, module, model.get_submodule(parent_path), child, component)
        router = getattr(site.adapter, "router_kind", None)
        if not isinstance(site.adapter, (MMAdapter, RepAdapter)):
            site.reason = f"{type(site.adapter).__name__} is not a linear bottleneck adapter"
        elif isinstance(site.adapter, MMAdapter) and router not in FOLDABLE_ROUTERS:
            site.reason = f"router {router!r} computes expert weights from the input; only modality/constant routers fold"
        sites.append(site)
    return sites


def probe_batch(model: CotuneModel, seed: int = 0) -> dict:
    """One right-padded row per modality key: its encoders' placeholders, then random text ids.

    Returns ``input_ids`` / ``attention_mask`` [K, S] and ``media`` (encoder name -> random inputs
    of the items in row order, shaped like the encoder's dummy input)."""
    g = torch.Generator().manual_seed(seed)
    device = model.llm.get_input_embeddings().weight.device
    vocab = model.llm.get_input_embeddings().num_embeddings
    placeholders = torch.tensor(list(model.placeholder_ids.values()), dtype=torch.long)
    items = {name: torch.randn(enc.dummy_input().shape, generator=g) for name, enc in model.encoders.items()}
    with torch.no_grad():
        counts = {name: model.encode_media({name: x}).get(name).shape[1] for name, x in items.items()}
    rows, media = [], {name: [] for name in model.encoders}
    for key in model.modality_keys:
        present = [] if key == "text" else key.split("+")
        ids = [model.placeholder_ids[name] for name in present for _ in range(counts[name])]
        text = torch.randint(0, vocab, (PROBE_TEXT_TOKENS,), generator=g)
        text = text.masked_fill(torch.isin(text, placeholders), 0)
        rows.append(torch.tensor(ids + text.tolist()))
        for name in present:
            media[name].append(items[name])
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "media": {name: torch.cat(xs) for name, xs in media.items() if xs}}


def llm_routing_mixes(model: CotuneModel) -> dict[nn.Module, torch.Tensor]:
    """Expert weights [K, E] per modality row for each modality-routed LLM adapter, as its forward
    uses them: the routing state's per-layer weights (separate mode) or its own router (inline)."""
    if model.routing_state is None:
        return {}
    adapters = [m for m in model.llm.modules() if isinstance(m, MMAdapter) and m.router_kind == "modality"]
    own: dict[nn.Module, torch.Tensor] = {}

    def capture(adapter, args):
        x = args[0].to(adapter.down.weight.dtype)
        own[adapter] = torch.softmax(adapter.router(x[:, 0]) / adapter.temperature, -1)

    handles = [a.register_forward_pre_hook(capture) for a in adapters]
    try:
        rows = torch.arange(len(model.modality_keys), device=model.llm.get_input_embeddings().weight.device)
        weights = model.compute_routing(rows)  # [L, K, E]
    finally:
        for handle in handles:
            handle.remove()
    if model.config.routing.mode == "inline":
        return own
    return {a: weights[a.layer_index] for a in adapters}


def _main_input(args: tuple, kwargs: dict):
    return kwargs["hidden_states"] if "hidden_states" in kwargs else (args[0] if args else None)


def _with_main_input(args: tuple, kwargs: dict, value) -> tuple[tuple, dict]:
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": value}
    return (value, *args[1:]), kwargs


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


class _SiteProbe:
    """Hooks on one site's wrapped module and its leaf layers (see the module docstring)."""

    def __init__(self, site: Site, generator: torch.Generator) -> None:
        self.site, self.generator = site, generator
        self.current = self.perturbed = None
        self.rechecking = False
        self.calls = 0
        self.readers: dict[nn.Module, str] = {}
        self.other_input: set[nn.Module] = set()
        self.changed = False

    def attach(self) -> list:
        inner = self.site.wrapper.module
        handles = [inner.register_forward_pre_hook(self._enter, with_kwargs=True),
                   inner.register_forward_hook(self._recheck, with_kwargs=True)]
        for name, module in inner.named_modules():
            if next(module.children(), None) is None:  # leaves only
                handles.append(module.register_forward_pre_hook(partial(self._leaf, name or type(module).__name__)))
        return handles

    def _enter(self, module, args, kwargs):
        if not self.rechecking:
            self.current, self.calls = _main_input(args, kwargs), self.calls + 1

    def _leaf(self, name, module, args):
        if not args:
            return None
        if self.rechecking:
            if args[0] is self.perturbed and unsupported_reason(module) is None:
                return (self.current, *args[1:])  # pin a linear reader to the original input
            return None
        if args[0] is self.current:
            self.readers[module] = name
        elif unsupported_reason(module) is None:
            self.other_input.add(module)
        return None

    def _recheck(self, module, args, kwargs, output):
        if self.rechecking or self.current is None:
            return None
        x = self.current
        noise = torch.randn(x.shape, generator=self.generator).to(device=x.device, dtype=x.dtype)
        self.perturbed = x + noise * (x.detach().float().std().nan_to_num(0).item() + 1.0)
        args, kwargs = _with_main_input(args, kwargs, self.perturbed)
        self.rechecking = True
        try:
            again = module(*args, **kwargs)
        finally:
            self.rechecking, self.perturbed = False, None
        for a, b in zip(_tensors(output), _tensors(again)):
            if a.shape != b.shape or not torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6):
                self.changed = True
        return None

    def verdict(self) -> None:
        """Sets the site's consumers, or its reason to stay unmerged."""
        site = self.site
        kind = type(site.wrapper.module).__name__
        linear = {m: n for m, n in self.readers.items() if unsupported_reason(m) is None}
        others = sorted(n for m, n in self.readers.items() if m not in linear)
        convs = [(n, unsupported_reason(m)) for m, n in self.readers.items() if isinstance(m, nn.Conv2d) and m not in linear]
        if self.calls == 0:
            site.reason = "the site did not run on the probe batch"
        elif convs:
            site.reason = f"{kind}.{convs[0][0]} reads the adapted input but cannot absorb the adapter: {convs[0][1]}"
        elif not linear:
            read_by = f" (it is read by: {', '.join(others)})" if others else ""
            site.reason = f"{kind} consumes its input in a non-linear way: no linear layer reads it directly{read_by}"
        elif any(m in self.other_input for m in linear):
            names = sorted(n for m, n in linear.items() if m in self.other_input)
            site.reason = f"{kind}.{names[0]} reads the adapted input and other inputs too"
        elif self.changed:
            extra = f" and {', '.join(others)}" if others else ""
            site.reason = (f"{kind} consumes its input in a non-linear way: besides its linear layers "
                           f"{', '.join(sorted(linear.values()))}, its output depends on the input directly{extra} "
                           "(a residual, a norm or a reshaped read)")
        else:
            site.consumers = list(linear)


def analyse_sites(model: CotuneModel, sites: list[Site], batch: dict, seed: int = 0) -> None:
    """Runs ``batch`` through ``model`` (eval, no grad) and decides each site's consumers or reason."""
    generator = torch.Generator().manual_seed(seed)
    probes = [_SiteProbe(site, generator) for site in sites]
    handles = [h for probe in probes for h in probe.attach()]
    try:
        with torch.no_grad():
            model(**batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    for probe in probes:
        probe.verdict()
