"""4-bit and 8-bit frozen backbones (bitsandbytes on CPU): load, train, resume, generate, refuse merge."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cotune import load
from cotune.backbones.loading import quantized_layers
from cotune.config import ConfigError, load_config
from cotune.merge.model import MergeError, merge_model
from cotune.model import build_model
from cotune.model.generate import generate
from cotune.rundir import merge_run
from cotune.testing import corpus
from cotune.testing import tiny
from cotune.train import Trainer

pytest.importorskip("bitsandbytes")

QUANT = {4: {"bits": 4, "type": "nf4", "double_quant": True}, 8: {"bits": 8}}


def quantized_config(tiny_root, tmp_path, bits, encoder_bits=None, **train):
    """The corpus run config over the 64-wide tiny LLaMA and CLIP, quantized as asked."""
    raw = corpus.run_config(tiny_root, tmp_path / "data", **train)
    raw["model"]["llm"]["name_or_path"] = str(tiny.save_llm(tiny_root, "llama-64"))
    raw["model"]["encoders"]["image"]["name_or_path"] = str(tiny.save_encoder(tiny_root, "clip-64"))
    raw["model"]["llm"]["quantization"] = QUANT[bits]
    if encoder_bits is not None:
        raw["model"]["encoders"]["image"]["quantization"] = QUANT[encoder_bits]
    return load_config(data=raw)


def frozen_state(model) -> dict[str, torch.Tensor]:
    """Every frozen tensor (quantized weights, their quantization state, norms) by name."""
    state = model.state_dict()
    trainable = set(model.trainable_state_dict())
    return {k: v.detach().clone() for k, v in state.items() if k not in trainable and isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_backbone_loads_in_its_bits_and_keeps_trainables_in_float32(tiny_root, tmp_path, bits):
    config = quantized_config(tiny_root, tmp_path, bits, encoder_bits=bits)
    model = build_model(config)
    assert quantized_layers(model.llm) == {bits: 2 * 7}  # q, k, v, o, gate, up, down in each of 2 blocks
    assert bits in quantized_layers(model.encoders["image"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    # The LM head and embeddings are not quantized: they stay in the configured dtype.
    assert model.llm.get_input_embeddings().weight.dtype == torch.float32


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_training_learns_keeps_frozen_weights_and_saves_only_trainables(tiny_root, tmp_path, bits):
    config = quantized_config(tiny_root, tmp_path, bits, max_steps=6, epochs=50, checkpoint_every=3, warmup_steps=0)
    trainer = Trainer(config, tmp_path / "run")
    trainer.setup()
    model = trainer.model
    before = frozen_state(model)
    trainable = set(model.trainable_state_dict())
    final = trainer.run()
    after = frozen_state(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a frozen (quantized) tensor changed"
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-2:]) < losses[0]
    assert set(load_file(final / "trainable.safetensors")) == trainable
    # The run loads back onto a freshly quantized backbone with identical trainable weights.
    reloaded = load(tmp_path / "run")
    assert quantized_layers(reloaded.llm) == {bits: 14}
    for name, value in reloaded.trainable_state_dict().items():
        assert torch.equal(value, model.trainable_state_dict()[name])


def test_quantized_run_resumes_exactly(tiny_root, tmp_path):
    straight = Trainer(quantized_config(tiny_root, tmp_path, 4, max_steps=4, checkpoint_every=2), tmp_path / "straight")
    straight.run()
    first = Trainer(quantized_config(tiny_root, tmp_path, 4, max_steps=2, checkpoint_every=2), tmp_path / "resumed")
    first.run()
    second = Trainer(quantized_config(tiny_root, tmp_path, 4, max_steps=4, checkpoint_every=2), tmp_path / "resumed", resume=True)
    second.run()
    read = lambda run: [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert read(tmp_path / "resumed") == read(tmp_path / "straight")
    a, b = straight.model.trainable_state_dict(), second.model.trainable_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_model_generates_what_its_logits_say(tiny_root, tmp_path, bits):
    model = build_model(quantized_config(tiny_root, tmp_path, bits)).eval()
    tiny.randomise_trainables(model)
    ids = tiny.encode(model, "what colour is the shape")
    cached = generate(model, ids, max_new_tokens=4, do_sample=False, eos_token_id=None)
    uncached = generate(model, ids, max_new_tokens=4, do_sample=False, use_cache=False, eos_token_id=None)
    assert torch.equal(cached, uncached)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert int(cached[0, 0]) == int(logits[0, -1].argmax())


def test_merge_refuses_a_quantized_model_and_dequantizes_on_request(tiny_root, tmp_path):
    config = quantized_config(tiny_root, tmp_path, 4, max_steps=2, checkpoint_every=2)
    Trainer(config, tmp_path / "run").run()
    with pytest.raises(MergeError, match="dequantize"):
        merge_model(load(tmp_path / "run"))
    with pytest.raises(MergeError, match="--dequantize"):
        merge_run(tmp_path / "run", tmp_path / "merged")
    summary = merge_run(tmp_path / "run", tmp_path / "merged", dequantize=True)
    merged = load(tmp_path / "merged")
    assert quantized_layers(merged) == {}
    assert summary.max_logit_diff is not None


def test_quantization_is_refused_where_it_cannot_apply(tiny_root, tmp_path):
    raw = corpus.run_config(tiny_root, tmp_path / "data")
    raw["model"]["llm"].update(trainable="full", adapter={"type": "none"}, quantization=QUANT[4])
    with pytest.raises(ConfigError, match="quantization: a quantized backbone cannot be trained in full"):
        load_config(data=raw)
    raw = corpus.run_config(tiny_root, tmp_path / "data")
    raw["model"]["encoders"]["image"].update(type="mobilenet-v2", quantization=QUANT[8])
    with pytest.raises(ConfigError, match="model.encoders.image.quantization: 'mobilenet-v2'"):
        load_config(data=raw)


def test_gpt2_conv1d_projections_are_quantized_too(tmp_path):
    """GPT-2's projections are Conv1D, not nn.Linear; they must still load in 8 bits."""
    path = tiny.save_llm(tmp_path, "gpt2")
    model = build_model(load_config(data=tiny.model_config(path, quantization=QUANT[8])))
    assert quantized_layers(model.llm) == {8: 2 * 4}  # c_attn, c_proj, c_fc, mlp.c_proj per block


def test_an_eval_forward_does_not_change_the_weights_or_cut_the_gradient(tiny_root, tmp_path):
    """bitsandbytes would repack 4-bit weights for its CPU inference kernel on the first no-grad
    eval forward (rounding the scales, dropping the backward); cotune keeps the training layout."""
    model = build_model(quantized_config(tiny_root, tmp_path, 4))
    tiny.randomise_trainables(model)
    ids = tiny.encode(model, "what colour is the shape")
    mask = torch.ones_like(ids)

    def gradient() -> torch.Tensor:
        model.train()
        model.zero_grad()
        model(input_ids=ids, attention_mask=mask).logits.sum().backward()
        return model.modality_embedding.weight.grad.clone()

    before_weights, before_grad = frozen_state(model), gradient()
    assert before_grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    after = frozen_state(model)
    assert all(torch.equal(before_weights[k], after[k]) for k in before_weights)
    assert torch.equal(gradient(), before_grad)


def test_missing_bitsandbytes_is_one_clear_line(tiny_root, tmp_path):
    config = tmp_path / "q.yaml"
    config.write_text(yaml.safe_dump(tiny.model_config(tiny.save_llm(tiny_root, "llama-64"), quantization=QUANT[4])))
    # The package made unimportable in the child, as when the quant extra is not installed.
    code = "import sys; sys.modules['bitsandbytes'] = None; from cotune.cli.main import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "inspect", str(config)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "cotune: error: quantization needs bitsandbytes, which is not installed: pip install 'cotune[quant]'"
    )
    assert "Traceback" not in done.stderr


def test_a_quantized_run_serves_the_answers_predict_gives(tiny_root, tmp_path, capsys):
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from cotune.cli.main import main
    from cotune.model import save_model
    from cotune.serve import ServeConfig, load_service
    from cotune.serve.server import BackgroundServer

    config = quantized_config(tiny_root, tmp_path, 4)
    model = build_model(config)
    tiny.randomise_trainables(model)
    run = save_model(model, config, tmp_path / "q-run")
    question = "what colour is the shape"
    capsys.readouterr()
    assert main(["--log-level", "warning", "predict", str(run), "--prompt", question, "--max-new-tokens", "4", "--device", "cpu"]) == 0
    expected = json.loads(capsys.readouterr().out)["prediction"]
    service = load_service(run, ServeConfig(max_tokens=4), device="cpu")
    assert quantized_layers(service.model.llm) == {4: 14}
    with BackgroundServer(service) as url, httpx.Client(base_url=url, timeout=60) as client:
        body = {"messages": [{"role": "user", "content": question}], "max_tokens": 4}
        answer = client.post("/v1/chat/completions", json=body).json()
    assert expected and answer["choices"][0]["message"]["content"] == expected
    with pytest.raises(ConfigError, match="dequantize"):
        load_service(run, ServeConfig(), merged=True, device="cpu")
