"""The LLaVA-style baseline of benchmarks/versus_llava.py on tiny saved backbones: the splice puts
the projector's tokens exactly at the image positions, only LoRA and the projector train, and a
Trainer step leaves every frozen weight (and batch-norm statistic) unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from benchmarks import llava_baseline as lb
from cotune.encoders.mobilenet import MobileNetV2
from cotune.testing import tiny

# A ChatML template (SmolLM2's layout) for the tiny tokenizer, which has none.
CHATML = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
          "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def parts(tiny_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    vision = root / "mobilenet"
    vision.mkdir()
    torch.manual_seed(0)
    net = MobileNetV2(width_mult=0.35)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(vision / "model.safetensors"))
    (vision / "config.json").write_text('{"width_mult": 0.35, "image_size": 64}')
    model, tokenizer, processor, n = lb.build_baseline(tiny.save_llm(tiny_root), vision, lb.LlavaRecipe(lora_r=4, lora_alpha=8))
    tokenizer.chat_template = CHATML
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / f"{i}.png")
    questions = root / "questions.json"
    questions.write_text(json.dumps([["what colour is the shape?", "red", i % 4] for i in range(8)]))
    return model, tokenizer, processor, n, questions, images, root


def test_projector_tokens_land_exactly_at_the_image_positions(parts):
    model, tokenizer, processor, n, *_ = parts
    assert n == 4  # 64 px -> a 2 x 2 grid
    ids = [lb.prompt_ids(tokenizer, q, "Answer briefly.", n) for q in ("what colour is the shape?", "is there a circle?")]
    input_ids, _mask = lb.left_pad(ids, tokenizer.pad_token_id)
    pixels = torch.randn(2, 3, 64, 64)
    model.eval()
    embeds = model.embed(input_ids, pixels)
    image = input_ids == lb.IMAGE_TOKEN_INDEX
    assert image.sum(1).tolist() == [n, n]
    features = model.image_features(pixels)
    for row in range(2):
        assert torch.equal(embeds[row][image[row]], features[row])
    text = model.llm.get_input_embeddings()(input_ids.masked_fill(image, 0))
    assert torch.equal(embeds[~image], text[~image])
    short = input_ids.clone()
    short[0, image[0].nonzero()[0, 0]] = 5  # row 0 one image position short
    with pytest.raises(ValueError, match="placeholders per row"):
        model.embed(short, pixels)


def test_labels_supervise_only_the_answer_and_end_of_turn(parts):
    _model, tokenizer, _p, n, *_ = parts
    ids, labels = lb.training_ids(tokenizer, "what colour is the shape?", "red", "Answer briefly.", n)
    prompt = lb.prompt_ids(tokenizer, "what colour is the shape?", "Answer briefly.", n)
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [lb.IGNORE_INDEX] * len(prompt)
    supervised = [label for label in labels if label != lb.IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "red</s>"
    assert tokenizer.decode(ids[len(prompt) + len(supervised):]) == "\n"  # the template's newline: in, not supervised
    assert labels[len(prompt) + len(supervised):] == [lb.IGNORE_INDEX]


def test_trainer_step_moves_only_lora_and_projector(parts, tmp_path):
    model, tokenizer, processor, n, questions, images, _root = parts
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in name or name.startswith("projector.") for name in trainable)
    assert any(name.startswith("projector.") for name in trainable)
    before = {name: t.detach().clone() for name, t in model.state_dict().items()}  # parameters and BN buffers
    dataset = lb.VqaDataset(questions, images, tokenizer, processor, n, "Answer briefly.")
    trainer = lb.make_trainer(model, dataset, lb.Collator(tokenizer.pad_token_id), steps=2, batch_size=4, out=tmp_path, seed=0)
    trainer.train()
    after = model.state_dict()
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    frozen = set(before) - trainable
    assert not moved & frozen, sorted(moved & frozen)[:5]
    assert {name for name in moved if name.startswith("projector.")} and {name for name in moved if ".lora_B" in name}
    groups = trainer.optimizer.param_groups
    assert [len(g["params"]) for g in groups] == [len(trainable) - 4, 4]  # LoRA, then the projector's 2 weights + 2 biases
    assert trainer.state.num_input_tokens_seen == sum(len(dataset[i]["input_ids"]) for i in range(8))


def test_batched_greedy_answers_equal_one_by_one(parts):
    model, tokenizer, processor, n, _q, images, _root = parts
    model.eval()
    questions = ["what colour is the shape?", "is there a red circle in the image?"]
    pixels = torch.stack([lb.pixel_values(processor, images / f"{i}.png") for i in range(2)])
    settings = {"max_new_tokens": 4, "do_sample": False, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    rows = [lb.prompt_ids(tokenizer, q, None, n) for q in questions]
    ids, mask = lb.left_pad(rows, tokenizer.pad_token_id)
    batched = model.generate(ids, mask, pixels, **settings)
    for i, row in enumerate(rows):
        alone = model.generate(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long), pixels[i : i + 1], **settings)
        assert batched[i, : alone.shape[1]].tolist() == alone[0].tolist()


def write_easyvqa(root, questions) -> None:
    """An easy-VQA train split of ``questions``; its images are empty files (the draw reads no pixels)."""
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "questions.json").write_text(json.dumps(questions))
    for image in {q[2] for q in questions}:
        (root / "train" / "images" / f"{image}.png").touch()


def test_cotune_steps_extend_the_baseline_draw_without_changing_it(tmp_path):
    """--cotune-steps: the baseline's training set is the draw of a same-steps run, and cotune's is
    that set plus new questions, with no question twice and the recipe's open/yes-no rate kept."""
    from benchmarks import versus_llava as vl
    from benchmarks import versus_llava_measure as data

    rng = np.random.default_rng(0)
    questions = [[f"q{i}", ["yes", "no", "red", "circle"][int(rng.integers(4))], i] for i in range(400)]
    write_easyvqa(tmp_path / "evqa", questions)
    plan = dict(recipe="mm_adapter", batch_size=4)
    same = data.draw_training_set(tmp_path / "evqa", vl.Plan(steps=5, **plan), tmp_path / "same")
    longer = data.draw_training_set(tmp_path / "evqa", vl.Plan(steps=5, cotune_steps=12, **plan), tmp_path / "longer")
    read = lambda root: json.loads((root / "train" / "questions.json").read_text())
    assert read(same) == read(longer) and len(read(longer)) == 20
    assert not (tmp_path / "same" / "train-set-cotune").exists()
    cotune = read(tmp_path / "longer" / "train-set-cotune")
    assert cotune[:20] == read(longer) and len(cotune) == 48 and len({q[0] for q in cotune}) == 48
    opened = sum(q[1] not in ("yes", "no") for q in cotune[20:])
    assert opened == round(28 * 0.7) and data.training_mix("mm_adapter") == ({("open", "all"): 0.7, ("yes_no", "all"): 0.3}, "answer")
    assert vl.Plan(steps=5, cotune_steps=12).steps_of("cotune") == 12 and vl.Plan(steps=5).steps_of("cotune") == 5


def test_grounded_draw_is_the_demos_image_mix_with_describe_targets_for_both_sides(tmp_path):
    """The grounded recipe's shared file: half open questions, yes/no drawn equally per answer and
    polarity (the demo's SHARES), yes/no targets "<colour> <shape>: <answer>" of the question's own
    image; images whose colour and shape no open question names are never drawn for yes/no; and
    cotune's reader, reading that file with plain answers, trains on exactly its targets."""
    from benchmarks import versus_llava as vl
    from benchmarks import versus_llava_measure as data
    from cotune.config import DatasetConfig
    from cotune.data.questions import polarity
    from cotune.data.readers.easyvqa import read
    from cotune.data.report import DatasetReport

    rng = np.random.default_rng(1)
    colours, shapes = ["red", "blue", "green"], ["circle", "triangle", "rectangle"]
    truth, questions = {}, []
    for image in range(240):
        colour, shape = colours[int(rng.integers(3))], shapes[int(rng.integers(3))]
        truth[image] = f"{colour} {shape}"
        if image < 200:  # the last 40 images have no open question: nothing describes them
            questions += [["what color is the shape?", colour, image], ["what shape is this?", shape, image]]
        asked = colours[int(rng.integers(3))]
        questions += [[f"is there a {asked} shape?", "yes" if asked == colour else "no", image],
                      [f"is there not a {asked} shape?", "no" if asked == colour else "yes", image]]
    order = rng.permutation(len(questions))
    write_easyvqa(tmp_path / "evqa", [questions[i] for i in order])

    plan = vl.Plan(steps=10, batch_size=8)  # 80 questions
    drawn = json.loads((data.draw_training_set(tmp_path / "evqa", plan, tmp_path / "work") / "train" / "questions.json").read_text())
    assert len(drawn) == 80 and len({json.dumps(q) for q in drawn}) == 80
    cells = {}
    for question, target, image in drawn:
        description, _, answer = target.rpartition(": ")
        if description:
            assert description == truth[image] and image < 200
            cells[(answer, polarity(question))] = cells.get((answer, polarity(question)), 0) + 1
        else:
            cells["open"] = cells.get("open", 0) + 1
    assert cells == {"open": 40, ("yes", "affirmative"): 10, ("no", "affirmative"): 10, ("yes", "negated"): 10, ("no", "negated"): 10}
    assert data.training_mix("grounded")[1] == "describe"

    config = DatasetConfig(kind="easyvqa", path=str(tmp_path / "work" / "train-set"), split="train",
                           media_root=str(tmp_path / "evqa" / "train" / "images"))
    assert [[s.metadata["question"], s.messages[-1].content, s.metadata["image_id"]] for s in read(config, DatasetReport("x"))] == drawn
    with pytest.raises(ValueError, match="recipe"):
        vl.Plan(recipe="lava")
