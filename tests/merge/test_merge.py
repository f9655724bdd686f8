"""Merging (cotune merge): a merged directory reproduces the unmerged model's logits and greedy
generations, LoRA-only LLMs load in plain transformers, and unfoldable sites are kept or refused.

Every model's trainable tensors are randomised first: zero-initialised adapters are the identity,
and a merge of identities could not fail.
"""

import json
import shutil

import pytest
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from cotune import load
from cotune.adapters import MMAdapter, RepAdapter, RoutingState
from cotune.cli.main import main
from cotune.config import CotuneConfig, load_config
from cotune.encoders.mobilenet import MobileNetV2
from cotune.merge.fold import ModalityLinear, ModalitySelection, adapter_affine, fold_factors, folded_layer
from cotune.merge.model import MergedCotuneModel, MergeError, merge_model
from cotune.model import build_model, generate, left_pad, save_model
from cotune.rundir import RunDir, merge_run
from cotune.testing import tiny

TOL = 1e-4
LAVIN_IMAGE = {"kind": "clip", "layers": [1, 2, 3], "reduce": "cls", "trainable": "adapter",
               "adapter": {"type": "mm_adapter"}, "connector": {"type": "lavin-neck", "hidden": 16}}
LLAVA_IMAGE = {"kind": "clip", "layers": [-2], "reduce": "patches", "connector": {"type": "mlp2x-gelu"}}
MMA_LLM = {"trainable": "adapter", "adapter": {"type": "mm_adapter"}}


def merged_pair(root, tmp_path, llm="llama", encoders=None, **llm_fields):
    """(unmerged model, merged model loaded from the directory that ``merge_run`` wrote from the
    unmerged model's saved directory, merge summary). The saved directory is deleted before the
    merged one is loaded."""
    model = tiny.build(root, llm, encoders, **llm_fields)
    tiny.randomise_trainables(model)
    run = tmp_path / "run"
    save_model(model, CotuneConfig(model=model.config), run)
    summary = merge_run(run, tmp_path / "merged")  # loads its own copy: ``model`` stays unmerged
    shutil.rmtree(run)
    return model, load(tmp_path / "merged"), summary


def image_and_text(model, encoder="image", kind="clip"):
    """Right-padded batch [image row, text row] and its media."""
    rows = [tiny.encode(model, "what colour is the circle", {encoder: model.num_media_tokens(encoder)}),
            tiny.encode(model, "what is the answer yes no red")]
    ids, mask = tiny.pad_batch(rows)
    return ids, mask, {encoder: tiny.media_input(kind, 1, torch.Generator().manual_seed(1))}


def logit_diff(a, b, ids, mask, media=None) -> float:
    with torch.no_grad():
        x, y = a(ids, mask, media=media).logits, b(ids, mask, media=media).logits
    return float((x - y)[mask.bool()].abs().max())


def bare_llm_diff(root, family, model, ids) -> float:
    """How far ``model``'s text logits are from the bare LLM's (adapters must matter)."""
    bare = transformers.AutoModelForCausalLM.from_pretrained(tiny.save_llm(root, family))
    with torch.no_grad():
        return float((model(ids).logits - bare(ids).logits).abs().max())


# ------------------------------------------------------------------------------------------ maths


@pytest.mark.parametrize("router", ["rep", "constant", "modality"])
@pytest.mark.parametrize("layer_kind", ["linear", "conv1d"])
def test_folded_layer_equals_layer_after_adapter(router, layer_kind):
    torch.manual_seed(0)
    state = RoutingState(1)
    if router == "rep":
        adapter = RepAdapter(12, hidden=4, groups=2, scale=0.7)
    else:
        adapter = MMAdapter(12, 4, 2, experts=3, scale=0.7, router=router, routing_state=state, layer_index=0)
    layer = nn.Linear(12, 7) if layer_kind == "linear" else Conv1D(7, 12)
    for p in (*adapter.parameters(), *layer.parameters()):
        nn.init.normal_(p, std=0.3)
    adapter.eval()
    mixes = torch.softmax(torch.randn(3, 3), -1)  # [K modality rows, E experts]
    rows = torch.tensor([2, 0, 2, 1])
    x = torch.randn(4, 5, 12)
    factors = fold_factors(adapter_affine(adapter, mixes), layer)
    folded = folded_layer(layer, factors, ModalitySelection(state))
    with torch.no_grad(), state.applying(mixes[rows][None]):
        expected = layer(adapter(x))
    with torch.no_grad(), state.applying(torch.nn.functional.one_hot(rows, 3).float()[None]):
        got = folded(x)
    assert isinstance(folded, ModalityLinear if router == "modality" else nn.Linear)
    assert len(factors.up) == (3 if router == "modality" else 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, layer(x), atol=1e-2)  # the adapter is not the identity


# ------------------------------------------------------------------------------------------ LoRA


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "phi"])
def test_lora_merge_reproduces_logits(tiny_root, tmp_path, family):
    unmerged, merged, summary = merged_pair(tiny_root, tmp_path, family, {"image": LLAVA_IMAGE}, trainable="lora")
    assert summary.lora_layers and not summary.folded_layers and not summary.kept
    assert all(p.startswith("llm.") for p in summary.lora_layers)
    ids, mask, media = image_and_text(unmerged)
    assert logit_diff(unmerged, merged, ids, mask, media) <= TOL
    assert bare_llm_diff(tiny_root, family, merged, ids[1:, : int(mask[1].sum())]) > 1e-2
    assert not any("lora" in name for name, _ in merged.named_modules())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_lora_only_llm_loads_in_plain_transformers(tiny_root, tmp_path, family):
    unmerged, merged, _summary = merged_pair(tiny_root, tmp_path, family, trainable="lora")
    info = json.loads((tmp_path / "merged" / "manifest.json").read_text())["merged"]
    assert info["llm_standalone"] is True
    assert (tmp_path / "merged" / "llm" / "model.safetensors").is_file()
    plain, loading = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged" / "llm", output_loading_info=True)
    assert not any(loading.values()), loading
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "merged" / "llm")
    ids = torch.tensor([tokenizer("what is the answer yes no").input_ids])
    with torch.no_grad():
        reference = unmerged(ids).logits
        assert (plain(ids).logits - reference).abs().max() <= TOL
        assert (merged(ids).logits - reference).abs().max() <= TOL
    assert bare_llm_diff(tiny_root, family, merged, ids) > 1e-2


def test_lora_on_encoder_merges_into_its_weights(tiny_root, tmp_path):
    image = {**LLAVA_IMAGE, "trainable": "lora", "adapter": {"lora_r": 2, "target_modules": ["q_proj", "v_proj", "fc1"]}}
    unmerged, merged, summary = merged_pair(tiny_root, tmp_path, "llama", {"image": image}, trainable="lora")
    assert any(p.startswith("encoders.image.") for p in summary.lora_layers)
    ids, mask, media = image_and_text(unmerged)
    assert logit_diff(unmerged, merged, ids, mask, media) <= TOL


# ------------------------------------------------------------------------------------------ linear adapters


@pytest.mark.parametrize("family, routing", [("llama", "separate"), ("gpt2", "separate"), ("llama", "inline"), ("gpt2", "inline")])
def test_mm_adapter_folds_one_weight_set_per_modality(tiny_root, tmp_path, family, routing):
    overrides = [] if routing == "separate" else ["model.routing.mode=inline", "model.routing.rows=per_sample"]
    unmerged, merged, summary = merged_pair(tiny_root, tmp_path, family, {"image": LAVIN_IMAGE}, overrides=overrides, **MMA_LLM)
    assert isinstance(merged, MergedCotuneModel)
    # text and image rows route differently: two folded weight sets in every LLM layer
    llm_layers = {p: s for p, s in summary.folded_layers.items() if p.startswith("llm.")}
    assert len(llm_layers) == (2 if family == "gpt2" else 6) and set(llm_layers.values()) == {2}
    assert sum(isinstance(m, ModalityLinear) for m in merged.llm.modules()) == len(llm_layers)
    assert not any(isinstance(m, MMAdapter) for m in merged.llm.modules())
    # the CLIP adapters route per token: kept unmerged, and said so
    assert len(summary.kept) == 3 and all("per_token" in reason for reason in summary.kept.values())
    ids, mask, media = image_and_text(unmerged)
    assert logit_diff(unmerged, merged, ids, mask, media) <= TOL
    text = ids[1:, : int(mask[1].sum())]
    assert bare_llm_diff(tiny_root, family, merged, text) > 1e-2
    with torch.no_grad():  # text alone equals text inside the mixed batch (the per-set split is exact)
        alone = merged(text).logits[0]
        torch.testing.assert_close(alone, merged(ids, mask, media=media).logits[1, : text.shape[1]], atol=1e-5, rtol=1e-5)


def test_train_mode_without_dropout_matches(tiny_root, tmp_path):
    no_dropout = {"type": "mm_adapter", "dropout": 0.0}
    image = {**LAVIN_IMAGE, "adapter": no_dropout}
    unmerged, merged, _summary = merged_pair(tiny_root, tmp_path, "llama", {"image": image}, trainable="adapter", adapter=no_dropout)
    unmerged.train()
    merged.train()
    ids, mask, media = image_and_text(unmerged)
    assert logit_diff(unmerged, merged, ids, mask, media) <= TOL


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_rep_adapter_folds_into_fused_and_split_projections(tiny_root, tmp_path, family):
    rep = {"type": "rep_adapter", "sites": "attn+ffn"}
    image = {**LLAVA_IMAGE, "trainable": "adapter", "adapter": rep}
    unmerged, merged, summary = merged_pair(tiny_root, tmp_path, family, {"image": image}, trainable="adapter", adapter=rep)
    assert not summary.kept and set(summary.folded_layers.values()) == {1}
    suffixes = {p.rsplit(".", 2)[-2] + "." + p.rsplit(".", 1)[-1] for p in summary.folded_layers if p.startswith("llm.")}
    expected = {"attn.c_attn", "mlp.c_fc"} if family == "gpt2" else {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"}
    assert suffixes == expected
    ids, mask, media = image_and_text(unmerged)
    assert logit_diff(unmerged, merged, ids, mask, media) <= TOL
    assert bare_llm_diff(tiny_root, family, merged, ids[1:, : int(mask[1].sum())]) > 1e-2


@pytest.mark.parametrize("kind, adapter", [("clip", {"type": "mm_adapter", "router": "constant"}), ("vit", {"type": "rep_adapter"}),
                                           ("whisper", {"type": "rep_adapter"})])
def test_encoder_adapters_fold(tiny_root, tmp_path, kind, adapter):
    name = "audio" if kind == "whisper" else "image"
    encoder = {"kind": kind, "layers": [-1], "reduce": "all" if kind == "whisper" else "patches", "trainable": "adapter",
               "adapter": adapter, "connector": {"type": "linear"}}
    unmerged, merged, summary = merged_pair(tiny_root, tmp_path, "llama", {name: encoder})
    assert not summary.kept and summary.folded_layers and merged.routing_state is None
    assert all(p.startswith(f"encoders.{name}.") for p in summary.folded_layers)
    inputs = tiny.media_input(kind, 1, torch.Generator().manual_seed(1))
    n = merged.encode_media({name: inputs})[name].shape[1]
    ids, mask = tiny.pad_batch([tiny.encode(merged, "is it", {name: n}), tiny.encode(merged, "the answer")])
    assert logit_diff(unmerged, merged, ids, mask, {name: inputs}) <= TOL
    base = transformers.AutoModel.from_pretrained(tiny.save_encoder(tiny_root, kind))
    base = base.encoder if kind == "whisper" else base
    with torch.no_grad():
        plain = base(inputs, output_hidden_states=True).hidden_states[-1]
        assert (merged.encoders[name].hidden_states(inputs)[-1] - plain).abs().max() > 1e-3  # the adapters act


def test_fully_trained_encoder_and_llm_are_stored(tiny_root, tmp_path):
    image = {**LLAVA_IMAGE, "trainable": "full"}
    unmerged, merged, summary = merged_pair(tiny_root, tmp_path, "qwen2", {"image": image}, trainable="full")
    assert not summary.folded_layers and not summary.lora_layers
    stored = load_file(tmp_path / "merged" / "weights.safetensors")
    assert any(k.startswith("encoders.image.backbone.") for k in stored) and any(k.startswith("connectors.") for k in stored)
    ids, mask, media = image_and_text(unmerged)
    assert logit_diff(unmerged, merged, ids, mask, media) <= TOL


def test_two_encoders_give_a_weight_set_per_modality_key(tiny_root, tmp_path):
    encoders = {
        "image": {"kind": "siglip", "reduce": "mean", "layers": [-1], "trainable": "adapter",
                  "adapter": {"type": "mm_adapter", "router": "constant"}, "connector": {"type": "lavin-neck"}},
        "audio": {"kind": "whisper", "reduce": "windows", "window": 4, "trainable": "adapter",
                  "adapter": {"type": "rep_adapter"}, "connector": {"type": "linear"}},
    }
    unmerged, merged, summary = merged_pair(tiny_root, tmp_path, "llama", encoders, **MMA_LLM)
    assert merged.modality_keys == ["text", "image", "audio", "audio+image"]
    assert {s for p, s in summary.folded_layers.items() if p.startswith("llm.")} == {4}
    n_img, n_aud = merged.num_media_tokens("image"), merged.num_media_tokens("audio")
    rows = [tiny.encode(merged, "the answer"), tiny.encode(merged, "what shape", {"image": n_img}),
            tiny.encode(merged, "is it loud", {"audio": n_aud}), tiny.encode(merged, "both", {"image": n_img, "audio": n_aud})]
    ids, mask = tiny.pad_batch(rows)
    media = {"image": tiny.media_input("siglip", 2), "audio": tiny.media_input("whisper", 2)}
    assert logit_diff(unmerged, merged, ids, mask, media) <= TOL


def test_one_expert_collapses_to_a_single_weight_set(tiny_root, tmp_path):
    one = {"type": "mm_adapter", "experts": 1}
    unmerged, merged, summary = merged_pair(tiny_root, tmp_path, "llama", {"image": LAVIN_IMAGE}, trainable="adapter", adapter=one)
    assert {s for p, s in summary.folded_layers.items() if p.startswith("llm.")} == {1}
    assert not any(isinstance(m, ModalityLinear) for m in merged.modules())
    ids, mask, media = image_and_text(unmerged)
    assert logit_diff(unmerged, merged, ids, mask, media) <= TOL


def test_residual_conv_blocks_stay_unmerged(tiny_root, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "mobilenet"
    path.mkdir()
    save_file({k: v.contiguous() for k, v in MobileNetV2(width_mult=0.35).state_dict().items()}, path / "model.safetensors")
    (path / "config.json").write_text('{"width_mult": 0.35, "image_size": 64}')
    encoder = {"type": "mobilenet-v2", "name_or_path": str(path), "layers": [-1], "reduce": "patches",
               "trainable": "adapter", "adapter": {"type": "rep_adapter", "dim": 4}, "connector": {"type": "linear"}}
    config = load_config(data=tiny.model_config(tiny.save_llm(tiny_root), {"image": encoder}))
    model = build_model(config)
    tiny.randomise_trainables(model, std=0.05)
    save_model(model, config, tmp_path / "run")
    summary = merge_run(tmp_path / "run", tmp_path / "merged")
    reasons = " ".join(summary.kept.values())
    assert summary.folded_sites and summary.kept
    assert "non-linear" in reasons and "kernel (3, 3)" in reasons  # residual blocks; depthwise first conv
    unmerged, merged = load(tmp_path / "run"), load(tmp_path / "merged")
    pixels = torch.randn(1, 3, 64, 64)
    ids, mask = tiny.pad_batch([tiny.encode(merged, "what shape", {"image": 4}), tiny.encode(merged, "the")])
    assert logit_diff(unmerged, merged, ids, mask, {"image": pixels}) <= TOL


# ------------------------------------------------------------------------------------------ generation


def test_greedy_generation_is_identical(tiny_root, tmp_path):
    unmerged, merged, _summary = merged_pair(tiny_root, tmp_path, "llama", {"image": LAVIN_IMAGE}, **MMA_LLM)
    image = tiny.encode(unmerged, "what colour is the circle", {"image": 3})[0].tolist()
    text = tiny.encode(unmerged, "the answer is")[0].tolist()
    ids, mask = left_pad([image, text, text], unmerged.tokenizer.pad_token_id)
    pixels = tiny.media_input("clip", 1, torch.Generator().manual_seed(2))
    for kwargs in ({}, {"num_beams": 2}):
        a = generate(unmerged, ids, mask, media={"image": pixels}, max_new_tokens=8, eos_token_id=None, **kwargs)
        b = generate(merged, ids, mask, media={"image": pixels}, max_new_tokens=8, eos_token_id=None, **kwargs)
        assert a.tolist() == b.tolist()


# ------------------------------------------------------------------------------------------ refusals, directory, CLI


def test_llm_site_read_non_linearly_is_refused(tiny_root, tmp_path):
    model = tiny.build(tiny_root, "llama", trainable="adapter", adapter={"type": "rep_adapter", "attention_module": "input_layernorm"})
    tiny.randomise_trainables(model)
    with pytest.raises(MergeError, match=r"llm\.model\.layers\.0\.input_layernorm .*consumes its input in a non-linear way"):
        merge_model(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_merged_directory_refuses_remerge_resume_and_save(tiny_root, tmp_path):
    _unmerged, merged, _summary = merged_pair(tiny_root, tmp_path, "llama", {"image": LAVIN_IMAGE}, **MMA_LLM)
    out = tmp_path / "merged"
    with pytest.raises(MergeError, match="already a merged model"):
        merge_run(out, tmp_path / "again")
    with pytest.raises(MergeError, match="already merged"):
        merge_model(merged)
    with pytest.raises(MergeError, match="cannot be trained or resumed"):
        RunDir(out).refuse_merged()
    with pytest.raises(ValueError, match="merged model"):
        save_model(merged, CotuneConfig(model=merged.config), tmp_path / "saved")
    model = tiny.build(tiny_root, "llama", trainable="lora")
    with pytest.raises(FileExistsError, match="not empty"):
        merge_model(model, out)
    assert json.loads((out / "manifest.json").read_text())["merged"]["llm_standalone"] is False


def test_merged_directory_is_self_contained_and_movable(tiny_root, tmp_path):
    unmerged, _merged, _summary = merged_pair(tiny_root, tmp_path, "gpt2", {"image": LAVIN_IMAGE}, **MMA_LLM)
    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(tmp_path / "merged", moved)
    assert yaml.safe_load((moved / "config.yaml").read_text())["model"]["llm"]["name_or_path"] == "llm"
    folds = load_file(moved / "folds.safetensors")
    assert all(v.dtype in (torch.float32, torch.int64) for v in folds.values())
    reloaded = load(moved)
    ids, mask, media = image_and_text(unmerged)
    assert logit_diff(unmerged, reloaded, ids, mask, media) <= TOL


def test_cli_merge(tiny_root, tmp_path, capsys):
    model = tiny.build(tiny_root, "llama", {"image": LAVIN_IMAGE}, **MMA_LLM)
    tiny.randomise_trainables(model)
    save_model(model, CotuneConfig(model=model.config), tmp_path / "run")
    assert main(["merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "merged") in out and "kept unmerged: 3 adapter sites" in out and "per_token" in out
    assert main(["merge", str(tmp_path / "merged"), "--out", str(tmp_path / "again")]) == 2
    assert "already a merged model" in capsys.readouterr().err
