"""cotune export: a LLaVA-style run served by transformers' own classes answers what cotune answers,
the text path of any run loads as a plain causal LM, runs that cannot be expressed are refused in
one line. Every trainable tensor is randomised first (zero-initialised LoRA would export trivially).
"""

import contextlib
import io
import json
import shutil

import pytest
import torch
import transformers
from PIL import Image
from tokenizers.processors import TemplateProcessing

from cotune.cli.main import main
from cotune.config import load_config
from cotune.data.schema import Message, Sample
from cotune.data.templates import encode_prompt
from cotune.model import build_model, save_model
from cotune.model.data_spec import data_spec_from_model
from cotune.testing import corpus
from cotune.testing import tiny
from cotune.train import Trainer

QUESTION = "what colour is the circle"
CHATML = ("{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LORA = {"type": "lora", "lora_r": 4}


def chat_llm(tiny_root, tmp_path):
    """The tiny LLaMA with a ChatML template and a tokenizer that adds BOS itself (as Llama's do)."""
    path = tmp_path / "llm-chat"
    shutil.copytree(tiny.save_llm(tiny_root), path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = CHATML
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)])
    tokenizer.save_pretrained(path)
    return path


def siglip_encoder(tiny_root):
    path = tiny.save_encoder(tiny_root, "siglip")
    if not (path / "preprocessor_config.json").exists() and not (path / "processor_config.json").exists():
        transformers.SiglipImageProcessor(size={"height": 30, "width": 30}).save_pretrained(path)
    return path


def saved_run(tmp_path, llm_path, encoders, data=None, **llm_fields):
    """A saved model directory (what a run's model/ holds) with randomised trainables -> (dir, model)."""
    raw = tiny.model_config(llm_path, encoders, **llm_fields)
    raw["data"] = data or {}
    config = load_config(data=raw)
    model = build_model(config)
    tiny.randomise_trainables(model)
    save_model(model, config, tmp_path / "run")
    return tmp_path / "run", model


def cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def predicted(run, image, max_new_tokens=6):
    code, out, err = cli("predict", str(run), "--image", str(image), "--prompt", QUESTION, "--max-new-tokens", str(max_new_tokens))
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])["prediction"]


def export_llava(run, out):
    """``cotune export RUN --format llava --out OUT``, then the directory as transformers loads it
    -> (processor, LlavaForConditionalGeneration in eval mode)."""
    code, _, err = cli("export", str(run), "--format", "llava", "--out", str(out))
    assert code == 0, err
    return transformers.AutoProcessor.from_pretrained(out), transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()


def transformers_answer(llava, processor, image, max_new_tokens=6):
    """What an engine that never heard of cotune answers: processor, chat template, greedy generate."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=Image.open(image), text=prompt, return_tensors="pt")
    new = llava.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    eos = processor.tokenizer.eos_token_id
    new = new[: new.index(eos)] if eos in new else new
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip(), inputs


CASES = {
    # LLaVA-1.5's shape: CLIP layer -2 patches, mlp2x-gelu, LoRA in the LLM and the tower; LaVIN's layout and square resize
    "clip-mlp-lora-lavin": dict(encoder={"type": "clip", "layers": [-2], "reduce": "patches", "trainable": "lora",
                                         "adapter": LORA, "connector": {"type": "mlp2x-gelu"}},
                                llm=dict(trainable="lora", adapter=LORA), data={"template": "lavin", "image_transform": "square"}, chat=False),
    # SigLIP, two layers feature-wise, a linear projector, a fully trained LLM, a chat template + system prompt
    "siglip-linear-full-chat": dict(encoder={"type": "siglip", "layers": [-2, -3], "layer_merge": "features", "reduce": "patches",
                                             "connector": {"type": "linear"}},
                                    llm=dict(trainable="full"), data={"template": "chat", "system_prompt": "Answer in one word."},
                                    chat=True),
    # a frozen Qwen2 with tied embeddings: only the projector trained
    "clip-mlp-frozen-tied": dict(encoder={"type": "clip", "layers": [-1], "reduce": "all", "connector": {"type": "mlp2x-gelu"}},
                                 llm=dict(), data={"template": "lavin"}, chat=False, family="qwen2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_llava_export_answers_what_cotune_predict_answers(tiny_root, tmp_path, case):
    spec = CASES[case]
    encoder = dict(spec["encoder"])
    encoder["name_or_path"] = str(siglip_encoder(tiny_root) if encoder["type"] == "siglip" else tiny.save_encoder(tiny_root, "clip"))
    llm = chat_llm(tiny_root, tmp_path) if spec["chat"] else tiny.save_llm(tiny_root, spec.get("family", "llama"))
    run, model = saved_run(tmp_path, llm, {"image": encoder}, spec["data"], **spec["llm"])
    image = tmp_path / "photo.png"
    Image.new("RGB", (41, 29), (200, 40, 90)).save(image)

    processor, llava = export_llava(run, tmp_path / "llava")
    answer, inputs = transformers_answer(llava, processor, image)

    # the processor's ids are cotune's prompt ids, its pixels cotune's, and the logits cotune's
    data = data_spec_from_model(model, load_config(run / "config.yaml").data)
    sample = Sample("x", [Message("user", QUESTION)], {"image": [image]})
    ids = encode_prompt(sample, data.tokenizer, data.slots(), data.template, data.system_prompt)
    assert inputs["input_ids"][0].tolist() == ids
    pixels = data.encoders[0].preprocess(image, "x")[None]
    assert torch.allclose(inputs["pixel_values"], pixels, atol=1e-6)
    with torch.no_grad():
        ours = model(torch.tensor([ids]), media={"image": pixels}).logits
        theirs = llava(**inputs).logits
        bare = transformers.AutoModelForCausalLM.from_pretrained(llm)(torch.tensor([ids]).clamp(max=tiny.VOCAB_SIZE - 1)).logits
    assert (ours - theirs).abs().max() <= 1e-4
    assert (ours - bare).abs().max() > 1e-2  # the trained weights matter, so equality above means something
    assert answer == predicted(run, image)
    card = (tmp_path / "llava" / "README.md").read_text()
    assert "library_name: transformers" in card and "LlavaForConditionalGeneration" in card and "vllm serve" in card


@pytest.mark.parametrize("encoder, llm_fields, fragment", [
    ({"kind": "clip", "layers": [-2]}, dict(trainable="adapter", adapter={"type": "mm_adapter"}), "MM-Adapters route by modality"),
    ({"kind": "clip", "layers": [-2], "trainable": "adapter", "adapter": {"type": "rep_adapter"}}, {}, "train the encoder with LoRA"),
    ({"kind": "whisper", "layers": [-1], "connector": {"type": "audio-pool"}}, {}, "audio has no LLaVA form"),
    ({"kind": "clip", "layers": [-2], "reduce": "cls"}, {}, "LLaVA keeps every patch token"),
    ({"kind": "clip", "layers": [-2]}, dict(trainable="lora", adapter={**LORA, "gate": "media"}), "prompts with media only"),
])
def test_llava_export_refuses_what_llava_cannot_hold_in_one_line(tiny_root, tmp_path, encoder, llm_fields, fragment):
    spec = dict(encoder)
    kind = spec.pop("kind")
    spec.update(type=kind, name_or_path=str(tiny.save_encoder(tiny_root, kind)))
    run, _ = saved_run(tmp_path, tiny.save_llm(tiny_root), {"image": spec}, **llm_fields)
    code, _, err = cli("export", str(run), "--format", "llava", "--out", str(tmp_path / "out"))
    lines = [line for line in err.splitlines() if line.startswith("cotune: error:")]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["lora", "lora_gated", "mm_adapter"])
def test_causal_lm_export_equals_the_run_on_text(tiny_root, tmp_path, case):
    encoders = {"image": {"type": "clip", "name_or_path": str(tiny.save_encoder(tiny_root, "clip")), "layers": [-2],
                          "connector": {"type": "mlp2x-gelu"}}}
    if case.startswith("lora"):
        adapter = {**LORA, "gate": "media"} if case == "lora_gated" else LORA
        run, model = saved_run(tmp_path, chat_llm(tiny_root, tmp_path), encoders, {"system_prompt": "Be brief."},
                               trainable="lora", adapter=adapter)
    else:  # LaVIN: modality-routed MM-Adapters in the LLM, folded with the text row's weights
        run, model = saved_run(tmp_path, tiny.save_llm(tiny_root), encoders, {"template": "lavin"},
                               trainable="adapter", adapter={"type": "mm_adapter", "dropout": 0.0})
    code, _, err = cli("export", str(run), "--format", "causal-lm", "--out", str(tmp_path / "lm"))
    assert code == 0, err
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "lm")
    lm = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    data = data_spec_from_model(model, load_config(run / "config.yaml").data)
    expected = encode_prompt(Sample("x", [Message("user", QUESTION)]), data.tokenizer, data.slots(), data.template, data.system_prompt)
    assert ids[0].tolist() == expected
    with torch.no_grad():
        ours, theirs = model(ids).logits, lm(ids).logits
        bare = transformers.AutoModelForCausalLM.from_pretrained(tiny.save_llm(tiny_root))(ids).logits
    assert (ours - theirs).abs().max() <= 1e-4
    if case == "lora_gated":  # text prompts never run a media-gated LoRA: the text path is the untuned LLM
        assert (ours - bare).abs().max() <= 1e-5
    else:
        assert (ours - bare).abs().max() > 1e-2
    assert "text-generation" in (tmp_path / "lm" / "README.md").read_text()


def test_export_refuses_an_unknown_run_and_a_full_output_directory(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("taken")
    code, _, err = cli("export", str(tmp_path), "--format", "causal-lm", "--out", str(tmp_path / "out"))
    assert code == 2 and "exists and is not empty" in err
    code, _, err = cli("export", str(tmp_path / "nothing"), "--format", "causal-lm", "--out", str(tmp_path / "new"))
    assert code == 2 and "no such directory" in err


@pytest.mark.parametrize("family, exported", [("llama", True), ("qwen2", False)])
def test_causal_lm_folds_need_a_config_that_holds_their_biases(tiny_root, tmp_path, family, exported):
    """MM-Adapters before the FFN fold into gate/up projections that have no bias: LLaMA's config
    turns on mlp_bias (down_proj gets zeros), Qwen2's has no such flag and the export is refused."""
    adapter = {"type": "mm_adapter", "dropout": 0.0, "sites": "attn+ffn"}
    run, model = saved_run(tmp_path, tiny.save_llm(tiny_root, family), {}, {"template": "lavin"}, trainable="adapter", adapter=adapter)
    code, _, err = cli("export", str(run), "--format", "causal-lm", "--out", str(tmp_path / "lm"))
    if not exported:
        assert code == 2 and "cannot hold" in err and "mlp.gate_proj.bias" in err
        return
    assert code == 0, err
    lm = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    assert lm.config.mlp_bias and lm.config.attention_bias
    ids = tiny.encode(model, QUESTION)
    with torch.no_grad():
        assert (model(ids).logits - lm(ids).logits).abs().max() <= 1e-4
        assert float(lm.model.layers[0].mlp.down_proj.bias.abs().max()) == 0.0


def test_a_trained_run_exported_as_llava_answers_what_cotune_predict_answers(tiny_root, tmp_path):
    """The whole path on a real run directory: train (LoRA in the LLM and CLIP), export, and ask
    transformers and `cotune predict` the same question about the same image."""
    run = tmp_path / "run"
    Trainer(load_config(data=corpus.llava_lora_config(tiny_root, tmp_path / "data", max_steps=2)), run).run()
    image = tmp_path / "photo.png"
    Image.new("RGB", (30, 44), (20, 160, 60)).save(image)
    processor, llava = export_llava(run, tmp_path / "llava")
    answer, _ = transformers_answer(llava, processor, image, max_new_tokens=10)
    assert answer == predicted(run, image, max_new_tokens=10)
    card = (tmp_path / "llava" / "README.md").read_text()
    assert "scienceqa:train" in card and "training loss at step 2" in card


def test_a_placeholder_beyond_the_vocabulary_gets_a_row_that_is_never_generated(tiny_root, tmp_path):
    """LLaMA-2's tokenizer fills its 32,000 rows, so cotune's <image> gets id 32,000: the export adds
    the row (LLaVA embeds every id before splicing) and suppresses it in generation."""
    llm = tmp_path / "llm-full-vocab"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**tiny.LLM_CONFIGS["llama"]().to_dict(), "vocab_size": tiny.TOKENIZER_SIZE})).save_pretrained(llm)
    tiny.make_tokenizer().save_pretrained(llm)
    encoder = {"type": "clip", "name_or_path": str(tiny.save_encoder(tiny_root, "clip")), "layers": [-2], "connector": {"type": "mlp2x-gelu"}}
    run, model = saved_run(tmp_path, llm, {"image": encoder}, {"template": "lavin"})
    assert model.placeholder_ids["image"] == tiny.TOKENIZER_SIZE  # one past the last row
    image = tmp_path / "photo.png"
    Image.new("RGB", (33, 30), (10, 10, 250)).save(image)
    processor, llava = export_llava(run, tmp_path / "llava")
    assert llava.generation_config.suppress_tokens == [tiny.TOKENIZER_SIZE]
    answer, inputs = transformers_answer(llava, processor, image)
    with torch.no_grad():
        ours = model(inputs["input_ids"], media={"image": inputs["pixel_values"]}).logits
        theirs = llava(**inputs).logits
    assert theirs.shape[-1] == tiny.TOKENIZER_SIZE + 1 and (ours - theirs[..., :-1]).abs().max() <= 1e-4
    assert answer == predicted(run, image)


def test_card_reports_the_last_validation_loss(tmp_path):
    from cotune.export.card import _last_metrics

    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval/loss": 1.75}, {"step": 3, "loss": 1.25}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert _last_metrics(tmp_path) == {"step": 3, "loss": 1.25, "eval_loss": 1.75}


def test_causal_lm_export_of_a_run_whose_llm_comes_from_the_zoo(tiny_root, tmp_path, monkeypatch):
    """The demo's runs name the hub id (HuggingFaceTB/SmolLM2-135M-Instruct) and read the zoo's copy
    offline; the export's tokenizer must come from the same copy, not from the hub."""
    from cotune.zoo.sources import resolve_sources

    name = "HuggingFaceTB/SmolLM2-135M-Instruct"
    monkeypatch.setenv("COTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached from the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    zoo_copy = tmp_path / "cache" / "zoo" / name.replace("/", "--")
    shutil.copytree(tiny.save_llm(tiny_root), zoo_copy)
    (zoo_copy / "zoo.json").write_text("{}")
    raw = tiny.model_config(name, {}, trainable="lora", adapter=LORA)
    config = load_config(data=raw)
    model = build_model(config, sources=resolve_sources(config.model))
    tiny.randomise_trainables(model)
    save_model(model, config, tmp_path / "run")
    code, _, err = cli("export", str(tmp_path / "run"), "--format", "causal-lm", "--out", str(tmp_path / "lm"))
    assert code == 0, err
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "lm").vocab_size == model.tokenizer.vocab_size
