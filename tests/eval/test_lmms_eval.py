"""The ``cotune`` model of lmms-eval, offline: found through the plugin entry point, and on a local
task asking easy-VQA questions it gives ``cotune eval``'s answers and score; its loglikelihood is
the teacher-forced loss, the same in any batch, and calls greedy exactly the continuation that
generation produces. Skips when lmms-eval (extra ``lmms-eval``) cannot be imported."""

from __future__ import annotations

import json
import textwrap

import pytest
from PIL import ImageFile

from cotune.eval import evaluate_run
from cotune.rundir import RunDir
from cotune.testing import corpus
from cotune.testing import tiny

QUESTIONS = ["what color is the shape?", "is there a circle?", "what shape is in the image?", "is the shape red?"]


@pytest.fixture(scope="module", autouse=True)
def lmms_eval():
    """lmms-eval's evaluator, imported only when these tests run: importing it sets PIL's
    LOAD_TRUNCATED_IMAGES (lmms_eval/api/task.py), which is put back afterwards so that later tests
    see truncated images as cotune does."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    yield pytest.importorskip("lmms_eval.evaluator", reason="lmms-eval is not installed (pip install 'cotune[lmms-eval]')")
    ImageFile.LOAD_TRUNCATED_IMAGES = before


@pytest.fixture(scope="module")
def image_run(tiny_root, tmp_path_factory):
    return tiny.save_image_run(tiny_root, tmp_path_factory.mktemp("lmms-run") / "model", seed=7)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))


def easyvqa(root, answers):
    return corpus.write_easyvqa(root, "test", [[QUESTIONS[i % 4], answer, i % 3] for i, answer in enumerate(answers)])


TASK = """\
    task: cotune_local_vqa
    dataset_path: json
    dataset_kwargs:
      data_files:
        test: {docs}
    test_split: test
    output_type: generate_until
    doc_to_visual: !function utils.doc_to_visual
    doc_to_text: !function utils.doc_to_text
    doc_to_target: answer
    generation_kwargs:
      max_new_tokens: 5
      do_sample: false
      until: ["\\n\\n"]
    process_results: !function utils.process_results
    metric_list:
      - metric: exact_match
        aggregation: mean
        higher_is_better: true
    """
UTILS = """\
    from PIL import Image


    def doc_to_visual(doc):
        return [Image.open(doc["image"]).convert("RGB")]


    def doc_to_text(doc):
        return doc["question"]


    def process_results(doc, results):
        return {"exact_match": float(results[0].strip().lower() == doc["answer"].strip().lower())}
    """


def test_the_plugin_entry_point_registers_the_model():
    from lmms_eval.models import get_model

    from cotune.eval.lmms_model import CotuneLMM

    assert get_model("cotune") is CotuneLMM


def test_local_task_scores_equal_cotune_eval(lmms_eval, image_run, tmp_path, offline):
    model, config = RunDir(image_run).load()
    first = evaluate_run(model, config, f"easyvqa:{easyvqa(tmp_path / 'a', ['red'] * 8)}", max_new_tokens=5, batch_size=4,
                         out=tmp_path / "first")
    predictions = [json.loads(line)["prediction"] for line in (tmp_path / "first" / "predictions.jsonl").read_text().splitlines()]
    assert first["evaluated"] == 8 and all(predictions)
    # Every other reference is the model's own answer: both harnesses must score 50%.
    answers = [p if i % 2 == 0 else "zzz" for i, p in enumerate(predictions)]
    data = easyvqa(tmp_path / "b", answers)
    ours = evaluate_run(model, config, f"easyvqa:{data}", max_new_tokens=5, batch_size=4, out=tmp_path / "ours")
    docs = [{"question": QUESTIONS[i % 4], "answer": a, "image": str(data / "test" / "images" / f"{i % 3}.png")} for i, a in enumerate(answers)]
    (tmp_path / "docs.json").write_text(json.dumps(docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "cotune_local_vqa.yaml").write_text(textwrap.dedent(TASK).format(docs=tmp_path / "docs.json"))
    (tasks / "utils.py").write_text(textwrap.dedent(UTILS))
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager, get_task_dict

    # simple_evaluate's steps, without its patch of filelock (lmms-eval 0.7.3 imports filelock._api, gone in filelock 4).
    lm = get_model("cotune").create_from_arg_string(f"run={image_run}", {"batch_size": 4, "max_batch_size": None, "device": "cpu"})
    task_dict = get_task_dict(["cotune_local_vqa"], TaskManager(include_path=str(tasks), include_defaults=False))
    for name, task in task_dict.items():
        lm.task_dict[name] = task.dataset
    results = lmms_eval.evaluate(lm=lm, task_dict=task_dict, log_samples=True, bootstrap_iters=0)
    samples = results["samples"]["cotune_local_vqa"]
    answered = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"] for s in sorted(samples, key=lambda s: s["doc_id"])]
    assert answered == predictions
    score = results["results"]["cotune_local_vqa"]["exact_match,none"]
    assert ours["accuracy"] == 100 * score == 50.0


def test_loglikelihood_is_the_batch_independent_loss_and_greedy_matches_generation(image_run, tmp_path):
    from lmms_eval.api.instance import Instance
    from PIL import Image

    from cotune.eval.lmms_model import CotuneLMM

    image = Image.new("RGB", (64, 64), (200, 40, 30))
    docs = {"t": {"test": [{"q": q} for q in QUESTIONS]}}
    lm = CotuneLMM(run=str(image_run), batch_size=1, device="cpu", max_new_tokens=4)
    lm.task_dict = docs

    def request(kind, doc_id, second):
        return Instance(kind, (QUESTIONS[doc_id], second, lambda doc: [image], doc_id, "t", "test"), doc_id,
                        {"task": "t", "doc_id": doc_id, "repeats": 1})

    generated = lm.generate_until([request("generate_until", i, {"max_new_tokens": 4}) for i in range(4)])
    # The random model's first two characters are whole tokens (its later bytes need not decode to text that re-tokenizes alike).
    starts = [text[:2] for text in generated]
    tokenizer = lm.spec.tokenizer
    assert all(len(tokenizer(t, add_special_tokens=False)["input_ids"]) == 2 for t in starts)
    asks = [request("loglikelihood", i, text) for i, text in enumerate(starts)]
    asks += [request("loglikelihood", i, " zebra purple") for i in range(4)]
    single = lm.loglikelihood(asks)
    lm.batch_size = 8
    batched = lm.loglikelihood(asks)
    assert [greedy for _, greedy in single[:4]] == [True] * 4  # what generation produced is the greedy continuation
    assert not any(greedy for _, greedy in single[4:])
    for (a, _), (b, _) in zip(single, batched):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-5)  # right padding changes nothing
    assert all(loss > 0 for loss, _ in single) and min(l for l, _ in single[4:]) > max(l for l, _ in single[:4])


def test_visuals_become_lossless_files_the_preprocessors_read(tmp_path):
    import numpy as np
    from PIL import Image

    from cotune.data.media import load_audio, load_image
    from cotune.eval.lmms_model import write_visuals

    image = Image.new("RGB", (20, 12), (10, 200, 30))
    image.putpixel((3, 4), (1, 2, 3))
    clip = {"array": np.sin(np.linspace(0, 60, 16000)).astype(np.float32) * 0.5, "sampling_rate": 16000}
    media = write_visuals([image, clip, {"video": "v.mp4"}], tmp_path)
    assert [p.suffix for p in media["image"]] == [".png"] and [p.suffix for p in media["audio"]] == [".wav"]
    assert np.array_equal(np.asarray(load_image(media["image"][0], "s")), np.asarray(image))
    assert np.array_equal(load_audio(media["audio"][0], "s", 16000), clip["array"])
