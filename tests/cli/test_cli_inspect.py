"""``cotune inspect``: parameter counts against closed forms, offline dry runs, loud config errors.

Recipes are inspected from a fake offline Hugging Face cache that holds only the real config.json
files in tests/fixtures/hub_configs. huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE when it is
imported, so those runs happen in a subprocess (``python -m cotune``); the rest call ``main`` directly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cotune.cli.inspect import inspect_config
from cotune.cli.main import COMMANDS, build_parser, main
from cotune.config import config_hash, load_config
from cotune.model import build_model
from cotune.testing import tiny

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
HUB_CONFIGS = Path(__file__).resolve().parents[1] / "fixtures" / "hub_configs"


# ----------------------------------------------------------------- closed forms, from config.json alone
def hub_config(repo_id: str) -> dict:
    return json.loads((HUB_CONFIGS / repo_id.replace("/", "--") / "config.json").read_text())


def mma_params(width: int, hidden: int = 8, groups: int = 2, experts: int = 2) -> int:
    """One MM-Adapter (LaVIN's parameter count): down C*h+h, E grouped ups C*h/g+C, router E*C+E."""
    return (width * hidden + hidden) + experts * (width * hidden // groups + width) + (experts * width + experts)


def mlp_params(d_in: int, hidden: int, d_out: int) -> int:
    """Linear(d_in, hidden) -> act -> Linear(hidden, d_out), with biases."""
    return (d_in + 1) * hidden + (hidden + 1) * d_out


def llama_linear_shapes(cfg: dict) -> list[tuple[int, int]]:
    """(in, out) of every Linear in one LLaMA decoder layer: q, k, v, o, gate, up, down."""
    d, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or d // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    return [(d, q), (d, kv), (d, kv), (q, d), (d, inter), (d, inter), (inter, d)]


def llama_params(cfg: dict) -> int:
    """All parameters of a LlamaForCausalLM (no biases; two RMSNorms per layer; final norm; lm_head)."""
    d, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    per_layer = sum(i * o for i, o in llama_linear_shapes(cfg)) + 2 * d
    embeddings = vocab * d * (1 if cfg.get("tie_word_embeddings") else 2)
    return embeddings + layers * per_layer + d


def lora_params(cfg: dict, rank: int) -> int:
    """LoRA on every Linear of every decoder layer (lm_head excluded): sum of r * (in + out)."""
    return cfg["num_hidden_layers"] * sum(rank * (i + o) for i, o in llama_linear_shapes(cfg))


def clip_vision_params(cfg: dict) -> int:
    """All parameters of a CLIPVisionModel (conv patch embedding without bias, pre/post LayerNorm)."""
    v = cfg.get("vision_config", cfg)
    d, inter, layers = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    positions = (v["image_size"] // v["patch_size"]) ** 2 + 1
    embeddings = 3 * v["patch_size"] ** 2 * d + d + positions * d
    per_layer = 4 * (d * d + d) + (d * inter + inter) + (inter * d + d) + 2 * 2 * d
    return embeddings + 2 * d + layers * per_layer + 2 * d


# ----------------------------------------------------------------- running the CLI
@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """A Hugging Face hub cache holding only the fixture config.json files, in the real layout."""
    cache = tmp_path_factory.mktemp("hub")
    for fixture in sorted(HUB_CONFIGS.iterdir()):
        commit = hashlib.sha1(fixture.name.encode()).hexdigest()
        repo = cache / f"models--{fixture.name}"
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        shutil.copy(fixture / "config.json", snapshot / "config.json")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    return cache


@pytest.fixture
def offline_hub(hub_cache, monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("TRANSFORMERS_CACHE", raising=False)
    return hub_cache


def run_subprocess(*args: str, module: str = "cotune") -> dict:
    """Runs ``python -m <module> *args`` in the current environment; returns the parsed JSON report."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=180, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("cotune: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------- recipes from the offline hub cache
@pytest.mark.parametrize(
    "recipe, llm_id, expected",
    [("lavin-7b-scienceqa.yaml", "huggyllama/llama-7b", 3_781_296), ("lavin-13b-scienceqa.yaml", "huggyllama/llama-13b", 5_390_080),
     ("lavin-lite-7b-scienceqa.yaml", "huggyllama/llama-7b", 3_781_296), ("lavin-lite-13b-scienceqa.yaml", "huggyllama/llama-13b", 5_390_080)],
)
def test_lavin_recipe_counts_from_hub_cache(offline_hub, recipe, llm_id, expected):
    report = run_subprocess("inspect", str(RECIPES / recipe), "--dry-run", "--json")
    assert report["trainable_params"] == expected
    assert report["dry_run"] is True
    assert report["config_hash"] == config_hash(load_config(RECIPES / recipe))

    llm, clip = hub_config(llm_id), hub_config("openai/clip-vit-large-patch14")
    d, layers = llm["hidden_size"], llm["num_hidden_layers"]
    vit_width, vit_blocks = clip["vision_config"]["hidden_size"], clip["vision_config"]["num_hidden_layers"]
    assert mma_params(d) == 20 * d + 10
    expected_components = {
        "llm": {"trainable": layers * (20 * d + 10), "total": llama_params(llm) + layers * (20 * d + 10)},
        "encoder.image": {"trainable": 24 * 20_490, "total": clip_vision_params(clip) + vit_blocks * mma_params(vit_width)},
        "connector.image": {"trainable": 131_200 + 129 * d, "total": 131_200 + 129 * d},
        "modality_embedding": {"trainable": 2 * d, "total": 2 * d},
    }
    assert report["components"] == expected_components
    assert report["total_params"] == sum(c["total"] for c in expected_components.values())


def test_llava_lora_counts_from_hub_cache(offline_hub):
    report = run_subprocess("inspect", str(RECIPES / "llava-lora.yaml"), "--dry-run", "--json")
    vicuna, clip = hub_config("lmsys/vicuna-7b-v1.5"), hub_config("openai/clip-vit-large-patch14")
    lora = lora_params(vicuna, 128)
    connector = mlp_params(1024, vicuna["hidden_size"], vicuna["hidden_size"])
    assert report["components"] == {
        "llm": {"trainable": lora, "total": llama_params(vicuna) + lora},
        "encoder.image": {"trainable": 0, "total": clip_vision_params(clip)},
        "connector.image": {"trainable": connector, "total": connector},
    }
    assert report["trainable_params"] == lora + connector == 340_795_392


def test_audio_recipe_counts_from_hub_cache(offline_hub):
    report = run_subprocess(
        "inspect", str(RECIPES / "audio-whisper-lora.yaml"), "--dry-run", "--json",
        module="cotune.cli.main",
    )
    qwen, whisper = hub_config("Qwen/Qwen2-0.5B-Instruct"), hub_config("openai/whisper-small")
    lora = lora_params(qwen, 64)  # grouped k/v heads: k and v are 128 wide
    connector = mlp_params(whisper["d_model"], qwen["hidden_size"], qwen["hidden_size"])
    qkv_biases = qwen["num_hidden_layers"] * (qwen["hidden_size"] + 2 * 128)
    assert report["components"]["llm"] == {"trainable": lora, "total": llama_params(qwen) + qkv_biases + lora}
    assert lora == 35_192_832 and llama_params(qwen) + qkv_biases == 494_032_768  # Qwen2-0.5B's published size
    assert report["components"]["connector.audio"] == {"trainable": connector, "total": connector}
    assert report["components"]["encoder.audio"]["trainable"] == 0
    assert report["trainable_params"] == lora + connector > 0


# ----------------------------------------------------------------- local directories and tiny models
def test_dry_run_on_local_config_only_dirs(tmp_path, capsys):
    dirs = {}
    for repo_id in ("huggyllama/llama-7b", "openai/clip-vit-large-patch14"):
        dirs[repo_id] = tmp_path / repo_id.split("/")[1]
        dirs[repo_id].mkdir()
        shutil.copy(HUB_CONFIGS / repo_id.replace("/", "--") / "config.json", dirs[repo_id])
    code, out, err = run_main(
        capsys, "inspect", str(RECIPES / "lavin-7b-scienceqa.yaml"), "--dry-run", "--json",
        "--set", f"model.llm.name_or_path={dirs['huggyllama/llama-7b']}",
        "--set", f"model.encoders.image.name_or_path={dirs['openai/clip-vit-large-patch14']}",
    )
    assert code == 0, err
    assert json.loads(out)["trainable_params"] == 3_781_296
    assert sorted(p.name for d in dirs.values() for p in d.iterdir()) == ["config.json", "config.json"]


def _tiny_configs(root: Path) -> dict[str, dict]:
    llm, clip, whisper = tiny.save_llm(root, "llama"), tiny.save_encoder(root, "clip"), tiny.save_encoder(root, "whisper")
    mma = {"type": "mm_adapter", "dim": 8, "groups": 2, "experts": 2}
    return {
        "mma": tiny.model_config(llm, {"image": {
            "type": "clip", "name_or_path": str(clip), "layers": [1, 2, 3], "reduce": "cls", "trainable": "adapter",
            "adapter": mma, "connector": {"type": "lavin-neck", "hidden": 128},
        }}, trainable="adapter", adapter=mma),
        "lora": tiny.model_config(llm, {"audio": {
            "type": "whisper", "name_or_path": str(whisper), "layers": [-1], "reduce": "all",
            "connector": {"type": "audio-pool", "stride": 4},
        }}, trainable="lora", adapter={"type": "lora", "lora_r": 4}),
    }


@pytest.mark.parametrize("kind", ["mma", "lora"])
def test_dry_run_equals_loaded_model(tiny_root, tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(_tiny_configs(tiny_root)[kind]))
    reports = {}
    for dry in (True, False):
        code, out, err = run_main(capsys, "inspect", str(path), "--json", *(["--dry-run"] if dry else []))
        assert code == 0, err
        reports[dry] = json.loads(out)
    assert reports[True].pop("dry_run") is True and reports[False].pop("dry_run") is False
    assert reports[True] == reports[False]

    d, layers = 32, 2  # tiny llama
    if kind == "mma":
        assert reports[True]["components"] == {
            "llm": {"total": reports[True]["components"]["llm"]["total"], "trainable": layers * (20 * d + 10)},
            "encoder.image": {"total": reports[True]["components"]["encoder.image"]["total"], "trainable": 3 * mma_params(24)},
            "connector.image": {"total": mlp_params(24, 128, d), "trainable": mlp_params(24, 128, d)},
            "modality_embedding": {"total": 2 * d, "trainable": 2 * d},
        }
    else:
        tiny_llama = tiny.LLM_CONFIGS["llama"]().to_dict()
        assert reports[True]["components"]["llm"]["trainable"] == lora_params(tiny_llama, 4) == 4096
        assert reports[True]["trainable_params"] == 4096 + mlp_params(24, d, d)


def test_components_cover_every_parameter(tiny_root):
    config = load_config(data=_tiny_configs(tiny_root)["mma"])
    model = build_model(config, meta=True)
    report = inspect_config(config, dry_run=True)
    assert report["total_params"] == sum(p.numel() for p in model.parameters())
    assert report["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_table_output(tiny_root, tmp_path, capsys):
    path = tmp_path / "mma.yaml"
    path.write_text(yaml.safe_dump(_tiny_configs(tiny_root)["mma"]))
    code, out, err = run_main(capsys, "inspect", str(path), "--dry-run")
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line and not line.startswith("-")}
    assert set(rows) >= {"component", "llm", "encoder.image", "connector.image", "modality_embedding", "total", "config"}
    assert rows["connector.image"][-1] == "100.00%"
    assert rows["llm"][0] == "float32" and rows["llm"][2] == f"{2 * (20 * 32 + 10):,}"  # weights, total, trainable


# ----------------------------------------------------------------- errors and the command table
def test_unknown_key_is_one_line_exit_2(capsys):
    code, out, err = run_main(capsys, "inspect", str(RECIPES / "lavin-7b-scienceqa.yaml"), "--set", "model.llm.nme=x")
    assert code == 2 and out == ""
    line = error_line(err)
    assert "model.llm.nme" in line and "unknown key" in line
    assert "name_or_path" in line and "trainable" in line  # lists the valid keys


def test_unknown_encoder_type_lists_choices(capsys):
    code, _, err = run_main(capsys, "inspect", str(RECIPES / "lavin-7b-scienceqa.yaml"), "--set", "model.encoders.image.type=clipp")
    assert code == 2
    line = error_line(err)
    assert "lavin-7b-scienceqa.yaml: model.encoders.image.type: unknown encoder 'clipp' (did you mean 'clip'?)" in line
    for name in ("clip", "siglip", "dinov2", "whisper"):
        assert name in line


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["inspect", "does-not-exist.yaml"], "does not exist"),
        (["inspect", str(RECIPES / "llava-lora.yaml"), "--set", "model.llm.dtype"], "expected KEY=VALUE"),
        (["inspect", str(RECIPES / "llava-lora.yaml"), "--dry-run", "--set", "model.llm.name_or_path=/no/such/dir"],
         "model.llm.name_or_path: '/no/such/dir' is a local path and there is no such directory: /no/such/dir"),
    ],
)
def test_user_errors_exit_2(capsys, args, fragment):
    code, _, err = run_main(capsys, *args)
    assert code == 2
    assert fragment in error_line(err)


def test_help_lists_commands(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for name, command in COMMANDS.items():
        assert name in out and command.help
    assert main([]) == 2  # a command is required
    capsys.readouterr()


def test_every_config_command_takes_repeated_set():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in COMMANDS:
        if "config" not in {a.dest for a in subparsers[name]._actions}:
            continue
        args = parser.parse_args([name, "c.yaml", "--set", "a.b=1", "--set", "c=2"])
        assert args.config == "c.yaml" and args.overrides == ["a.b=1", "c=2"]
        assert parser.parse_args([name, "c.yaml"]).log_level == "info"
        assert parser.parse_args([name, "c.yaml", "--log-level", "debug"]).log_level == "debug"
        assert parser.parse_args(["--log-level", "error", name, "c.yaml"]).log_level == "error"


def test_package_reexports():
    import cotune

    assert cotune.__version__ == "0.1.0"
    assert cotune.load_config is load_config
    for name in ("build_model", "CotuneModel", "CotuneConfig", "ModelConfig", "ConfigError"):
        assert hasattr(cotune, name)


# ----------------------------------------------------------------- weights and the memory plan
def test_weights_column_reads_bits_from_the_config(offline_hub):
    report = run_subprocess("inspect", str(RECIPES / "lavin-lite-7b-scienceqa.yaml"), "--dry-run", "--json")
    assert report["weights"] == {
        "llm": {"bits": 4, "format": "nf4", "rest": "bfloat16"},
        "encoder.image": {"bits": 16, "format": "bfloat16"},
        "connector.image": {"bits": 32, "format": "float32"},
        "modality_embedding": {"bits": 32, "format": "float32"},
    }


def test_table_shows_weights_per_component(tiny_root, tmp_path, capsys):
    raw = _tiny_configs(tiny_root)["mma"]
    raw["model"]["llm"]["dtype"] = "bfloat16"
    path = tmp_path / "mma.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, out, err = run_main(capsys, "inspect", str(path), "--dry-run")
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line and not line.startswith("-")}
    assert rows["component"][0] == "weights"
    assert rows["llm"][0] == "bfloat16" and rows["encoder.image"][0] == "float32"


def test_memory_plan_says_lite_fits_one_24gb_card_and_full_7b_does_not(offline_hub):
    lite = run_subprocess("inspect", str(RECIPES / "lavin-lite-7b-scienceqa.yaml"), "--memory", "--device-memory", "24GB", "--json")
    plan = lite["memory"]
    assert plan["fits"] is True and plan["settings"]["batch_size"] == 1 and plan["settings"]["gradient_checkpointing"] is True
    assert plan["peak"] < plan["usable"] < 24 * 2**30 and plan["peak_with"] == plan["peak"] < plan["peak_without"]
    assert lite["trainable_params"] == 3_781_296 and lite["dry_run"] is True
    full = run_subprocess("inspect", str(RECIPES / "lavin-7b-scienceqa.yaml"), "--memory", "--device-memory", "24GB", "--json")["memory"]
    assert full["fits"] is False and full["peak"] > lite["memory"]["peak"]
    weights = {t["name"]: t["bytes"] for t in full["static"]}
    assert weights["weights llm"] > 3 * {t["name"]: t["bytes"] for t in plan["static"]}["weights llm"]
    advice = "\n".join(full["advice"])
    assert "--set train.gradient_checkpointing=true" in advice and "--set model.llm.quantization.bits=4" in advice
    # LaVIN's own float16 weights under bf16 autocast: a bf16 copy of every weight is kept for backward.
    fp16 = run_subprocess("inspect", str(RECIPES / "lavin-7b-scienceqa.yaml"), "--memory", "--device-memory", "24GB", "--json",
                          "--set", "model.llm.dtype=float16")["memory"]
    assert fp16["peak"] > full["peak"] and "--set model.llm.dtype=bfloat16" in "\n".join(fp16["advice"])


def test_memory_plan_table_and_overrides(tiny_root, tmp_path, capsys):
    path = tmp_path / "mma.yaml"
    path.write_text(yaml.safe_dump(_tiny_configs(tiny_root)["mma"]))
    code, out, err = run_main(capsys, "inspect", str(path), "--memory", "--batch-size", "2", "--seq-len", "32",
                              "--device-memory", "1GB", "--no-gradient-checkpointing")
    assert code == 0, err
    assert "memory plan per device: batch 2 x 32 tokens" in out and "gradient checkpointing off" in out
    assert "activations llm layers" in out and "logits" in out and "AdamW states" in out
    assert "device 1 GiB" in out and ": fits" in out
    code, out, err = run_main(capsys, "inspect", str(path), "--memory", "--json", "--batch-size", "2", "--seq-len", "32",
                              "--gradient-checkpointing", "--supervised-fraction", "0.25")
    assert code == 0, err
    settings = json.loads(out)["memory"]["settings"]
    assert settings == {**settings, "batch_size": 2, "seq_len": 32, "supervised_positions": 8, "gradient_checkpointing": True}


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--batch-size", "2"], "--batch-size: memory plan options; add --memory"),
        (["--memory", "--device-memory", "24XB"], "--device-memory: cannot read '24XB'"),
        (["--memory", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["--memory", "--supervised-fraction", "0"], "--supervised-fraction: must be in (0, 1]"),
    ],
)
def test_memory_flag_errors_are_one_line(tiny_root, tmp_path, capsys, args, fragment):
    path = tmp_path / "mma.yaml"
    path.write_text(yaml.safe_dump(_tiny_configs(tiny_root)["mma"]))
    code, out, err = run_main(capsys, "inspect", str(path), *args)
    assert code == 2 and out == ""
    assert fragment in error_line(err)


@pytest.mark.parametrize("command", [["train", "{config}", "--out", "{run}"], ["data", "check", "{config}"], ["inspect", "{config}"]])
def test_a_misspelt_reader_fails_before_any_backbone_is_read(capsys, tmp_path, command):
    """Configs do not import the readers; the commands check the names before building anything
    (the LLM path does not exist: reading it would be the error)."""
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"model": {"llm": {"name_or_path": str(tmp_path / "no-llm")}},
                                      "data": {"train": [{"kind": "jsonll", "path": str(tmp_path)}]}}))
    args = [a.format(config=config, run=tmp_path / "run") for a in command]
    code, _, err = run_main(capsys, *args)
    assert code == 2
    assert f"{config}: data.train[0].kind: unknown dataset reader 'jsonll' (did you mean 'jsonl'?)" in error_line(err)
    assert not (tmp_path / "run").exists()
