"""Dataset readers: good records come through exactly, bad ones are counted by reason, limits hold."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from cotune.data.schema import Message
from cotune.testing.readers import assert_counts, chat, gpt, human, png, read


def wav(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.zeros(1600, dtype=np.float32), 16000)
    return path


def write_json(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records))
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# --- llava -------------------------------------------------------------------------------------


def test_llava_good_records(tmp_path):
    image = png(tmp_path / "data" / "imgs" / "a.png")
    path = write_json(tmp_path / "data" / "llava.json", [
        {"id": "a", "image": "imgs/a.png", "conversations": [human("<image>\nWhat?"), gpt("Red."), human("Sure?"), gpt("Yes.")]},
        {"id": 7, "conversations": [{"from": "system", "value": "Be brief."}, {"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello"}]},
        {"conversations": [human("Describe."), gpt("A red square.")], "image": "imgs/a.png"},
    ])
    samples, report = read("llava", path)
    assert [s.id for s in samples] == ["a", "7", "llava-2"]
    assert samples[0].messages == chat(("user", "<image>\nWhat?"), ("assistant", "Red."), ("user", "Sure?"), ("assistant", "Yes."))
    assert samples[0].media == {"image": [image.resolve()]}
    assert samples[1].messages == chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"))
    assert samples[1].media == {} and samples[1].metadata == {}
    assert samples[2].media == {"image": [image.resolve()]}  # no marker: the template places it
    assert_counts(report, 3, {})


def test_llava_bad_records_are_counted_and_good_ones_kept(tmp_path):
    root = tmp_path / "data"
    png(root / "a.png")
    png(tmp_path / "outside.png")
    good = {"id": "good", "image": "a.png", "conversations": [human("<image>\nQ"), gpt("A")]}
    path = write_json(root / "bad.json", [
        good,
        dict(good),
        5,
        {"id": "no-conv"},
        {"id": "gpt-first", "conversations": [gpt("A"), human("Q")]},
        {"id": "ends-human", "conversations": [human("Q"), gpt("A"), human("Q2")]},
        {"id": "bad-from", "conversations": [{"from": "robot", "value": "Q"}, gpt("A")]},
        {"id": "bad-value", "conversations": [human(3), gpt("A")]},
        {"id": "empty", "conversations": [human("Q"), gpt("  ")]},
        {"id": "two-markers", "image": "a.png", "conversations": [human("<image> <image>"), gpt("A")]},
        {"id": "marker-no-image", "conversations": [human("<image>\nQ"), gpt("A")]},
        {"id": "marker-in-answer", "image": "a.png", "conversations": [human("Q"), gpt("<image>")]},
        {"id": "missing", "image": "nope.png", "conversations": [human("Q"), gpt("A")]},
        {"id": "escape", "image": "../outside.png", "conversations": [human("Q"), gpt("A")]},
        {"id": "bad-image", "image": 3, "conversations": [human("Q"), gpt("A")]},
    ])
    samples, report = read("llava", path)
    assert [s.id for s in samples] == ["good"]
    assert_counts(report, 1, {
        "malformed_record": 7, "missing_field": 1, "empty_answer": 1,
        "marker_mismatch": 3, "missing_media": 1, "path_escapes_root": 1,
    })
    assert report.examples["malformed_record"][0] == f"{path} record 1: duplicate id 'good'"
    assert report.examples["path_escapes_root"][0].startswith(f"{path} record 13: escape:")


def test_llava_jsonl_malformed_line_and_limit(tmp_path):
    record = {"conversations": [human("Q"), gpt("A")]}
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(record), "{not json", "", json.dumps(record), json.dumps(record)])
    samples, report = read("llava", path)
    assert [s.id for s in samples] == ["d-0", "d-2", "d-3"]
    assert_counts(report, 3, {"malformed_record": 1})
    assert report.examples["malformed_record"][0].startswith(f"{path} line 2: not valid JSON")
    samples, report = read("llava", path, limit=2)
    assert [s.id for s in samples] == ["d-0"] and report.total == 2


def test_llava_whole_file_errors_name_the_path(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": 1,')
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        read("llava", broken)
    write_json(tmp_path / "obj.json", {"id": 1})
    with pytest.raises(ValueError, match="obj.json: expected a JSON list"):
        read("llava", tmp_path / "obj.json")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read("llava", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="media_root"):
        read("llava", broken, media_root=str(tmp_path / "no-media"))


def test_directory_picks_the_split_file(tmp_path):
    record = [{"conversations": [human("Q"), gpt("A")]}]
    write_json(tmp_path / "llava_train.json", record)
    write_json(tmp_path / "llava_val.json", record)
    samples, _ = read("llava", tmp_path, split="val")
    assert [s.id for s in samples] == ["llava_val-0"]
    write_json(tmp_path / "train.json", record)
    with pytest.raises(ValueError, match="2 files match split 'train'.*llava_train.json, llava_val.json, train.json"):
        read("llava", tmp_path)
    with pytest.raises(ValueError, match="no file matches split 'test'"):
        read("llava", tmp_path, split="test")


def test_media_root_option(tmp_path):
    image = png(tmp_path / "images" / "x.png")
    path = write_json(tmp_path / "ann" / "a.json", [{"image": "x.png", "conversations": [human("Q"), gpt("A")]}])
    samples, _ = read("llava", path, media_root=str(tmp_path / "images"))
    assert samples[0].media == {"image": [image.resolve()]}


# --- alpaca ------------------------------------------------------------------------------------


def test_alpaca_good_and_bad_records(tmp_path):
    path = write_json(tmp_path / "alpaca_data.json", [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Greet.", "input": "", "output": "Hi!"},
        {"id": "own", "instruction": "Count.", "output": "1 2 3"},
        {"instruction": "No output."},
        {"output": "No instruction."},
        {"instruction": "   ", "output": "x"},
        {"instruction": "Empty.", "output": ""},
        {"instruction": "Typed.", "output": 5},
        {"instruction": "<image> What?", "output": "x"},
        {"id": "own", "instruction": "Again.", "output": "x"},
        ["not", "an", "object"],
    ])
    samples, report = read("alpaca", path)
    assert [s.id for s in samples] == ["alpaca_data-0", "alpaca_data-1", "own"]
    assert samples[0].messages == chat(("user", "Add.\n\n2 and 3"), ("assistant", "5"))
    assert samples[1].messages == chat(("user", "Greet."), ("assistant", "Hi!"))
    assert all(s.media == {} and s.metadata == {} for s in samples)
    assert_counts(report, 3, {"missing_field": 3, "empty_answer": 1, "malformed_record": 3, "marker_mismatch": 1})
    samples, report = read("alpaca", path, limit=1)
    assert len(samples) == 1 and report.total == 1


# --- jsonl -------------------------------------------------------------------------------------


def test_jsonl_good_records(tmp_path):
    image, clip = png(tmp_path / "i.png"), wav(tmp_path / "clips" / "c.wav")
    lines = [
        {"id": "m", "image": "i.png", "audio": ["clips/c.wav"], "metadata": {"answer": "dog"},
         "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "<image>\n<audio>\nWhat?"}, {"role": "assistant", "content": "A dog."}]},
        {"audio": "clips/c.wav", "messages": [{"role": "user", "content": "Hear?"}, {"role": "assistant", "content": "Yes."}]},
        {"image": ["i.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}, {"role": "assistant", "content": "Red."}]},
    ]
    samples, report = read("jsonl", write_lines(tmp_path / "chat.jsonl", [json.dumps(x) for x in lines]))
    assert [s.id for s in samples] == ["m", "chat-1", "chat-2"]
    assert samples[0].messages == chat(("system", "S"), ("user", "<image>\n<audio>\nWhat?"), ("assistant", "A dog."))
    assert samples[0].media == {"image": [image.resolve()], "audio": [clip.resolve()]}
    assert samples[0].metadata == {"answer": "dog"}
    assert samples[1].media == {"audio": [clip.resolve()]} and samples[1].kinds == ["audio"]
    assert samples[2].messages[0] == Message("user", "<image>\nWhat?")
    assert_counts(report, 3, {})


def test_jsonl_bad_records(tmp_path):
    wav(tmp_path / "root" / "c.wav")
    wav(tmp_path / "escaped.wav")
    user, answer = {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}
    lines = [
        json.dumps({"id": "ok", "audio": "c.wav", "messages": [user, answer]}),
        "[1, 2",
        json.dumps({"id": "no-messages"}),
        json.dumps({"id": "ends-user", "messages": [user, answer, user]}),
        json.dumps({"id": "bad-role", "messages": [{"role": "bot", "content": "Q"}, answer]}),
        json.dumps({"id": "empty", "messages": [user, {"role": "assistant", "content": ""}]}),
        json.dumps({"id": "markers", "audio": "c.wav", "messages": [{"role": "user", "content": "<audio><audio>"}, answer]}),
        json.dumps({"id": "image-marker", "messages": [{"role": "user", "content": "<image>"}, answer]}),
        json.dumps({"id": "missing", "audio": "gone.wav", "messages": [user, answer]}),
        json.dumps({"id": "escape", "audio": "../escaped.wav", "messages": [user, answer]}),
        json.dumps({"id": "empty-path", "audio": "", "messages": [user, answer]}),
        json.dumps({"id": "ok", "messages": [user, answer]}),
    ]
    path = write_lines(tmp_path / "root" / "bad.jsonl", lines)
    samples, report = read("jsonl", path)
    assert [s.id for s in samples] == ["ok"]
    assert_counts(report, 1, {
        "malformed_record": 4, "missing_field": 2, "empty_answer": 1,
        "marker_mismatch": 2, "missing_media": 1, "path_escapes_root": 1,
    })
    assert f"{path} line 12: duplicate id 'ok'" in report.examples["malformed_record"]


def test_jsonl_reads_a_json_list_too(tmp_path):
    path = write_json(tmp_path / "list.json", [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}])
    samples, _ = read("jsonl", path)
    assert samples[0].messages == chat(("user", "Q"), ("assistant", "A"))


# --- audioqa -----------------------------------------------------------------------------------


def test_audioqa_good_and_bad_rows(tmp_path):
    clip = wav(tmp_path / "audio" / "dog.wav")
    wav(tmp_path / "outside.wav")
    path = write_lines(tmp_path / "clotho_aqa_train.csv", [
        "file_name,QuestionText,answer,confidence",
        "dog.wav,Is a dog barking?,yes,yes",
        "dog.wav,Is a dog barking?,yes,maybe",
        "",
        "dog.wav,Is a dog barking?,,yes",
        "dog.wav,,no,yes",
        ",Is it loud?,no,yes",
        "cat.wav,Is a cat meowing?,yes,yes",
        "../outside.wav,Is it outside?,yes,yes",
        "dog.wav,Too,many,fields,here",
        '"dog.wav","Quoted, question?",no,yes',
    ])
    samples, report = read("audioqa", tmp_path, split="train")
    assert [s.id for s in samples] == ["dog.wav#0", "dog.wav#1", "dog.wav#4"]
    assert samples[0].messages == chat(("user", "Is a dog barking?"), ("assistant", "yes"))
    assert samples[0].media == {"audio": [clip.resolve()]}
    assert samples[0].metadata == {"answer": "yes", "question": "Is a dog barking?"}
    assert samples[2].messages[0].content == "Quoted, question?"
    assert_counts(report, 3, {"empty_answer": 1, "missing_field": 2, "missing_media": 1, "path_escapes_root": 1, "malformed_record": 1})
    assert report.examples["malformed_record"] == [f"{path} line 10: 5 fields, the header has 4"]
    assert report.examples["empty_answer"][0].startswith(f"{path} line 5:")
    samples, report = read("audioqa", path, limit=2)
    assert len(samples) == 2 and report.total == 2


def test_audioqa_csv_choice_and_layout_errors(tmp_path):
    wav(tmp_path / "a.wav")
    write_lines(tmp_path / "val.csv", ["file,question,answer", "a.wav,Q,A"])
    samples, _ = read("audioqa", tmp_path, split="val")
    assert samples[0].media == {"audio": [(tmp_path / "a.wav").resolve()]}  # no audio/ folder
    write_lines(tmp_path / "clotho_aqa_val.csv", ["file,question,answer"])
    with pytest.raises(ValueError, match=r"2 files match split 'val'.*clotho_aqa_val\.csv, val\.csv"):
        read("audioqa", tmp_path, split="val")
    with pytest.raises(ValueError, match="no file matches split 'test'"):
        read("audioqa", tmp_path, split="test")
    no_question = write_lines(tmp_path / "other" / "x.csv", ["file,answer", "a.wav,A"])
    with pytest.raises(ValueError, match=r"x\.csv: no question column .*columns: file, answer"):
        read("audioqa", no_question)


# --- audiocaps ---------------------------------------------------------------------------------


def test_audiocaps_clotho_captions(tmp_path):
    first, second = wav(tmp_path / "audio" / "rain.wav"), wav(tmp_path / "audio" / "bird.wav")
    path = write_lines(tmp_path / "clotho_captions_development.csv", [
        "file_name,caption_1,caption_2,caption_3",
        "rain.wav,Rain falls.,,Heavy rain on a roof.",
        "bird.wav,A bird sings.,Birds chirp.,A bird calls.",
        "gone.wav,Silence.,Quiet.,Nothing.",
        "bird.wav,too few fields",
    ])
    samples, report = read("audiocaps", tmp_path, split="development")
    assert [s.id for s in samples] == ["rain.wav#0", "rain.wav#1", "bird.wav#0", "bird.wav#1", "bird.wav#2"]
    assert samples[0].messages == chat(("user", "Describe the sound in one sentence."), ("assistant", "Rain falls."))
    assert samples[1].messages[1].content == "Heavy rain on a roof."
    assert samples[0].media == {"audio": [first.resolve()]} and samples[2].media == {"audio": [second.resolve()]}
    assert samples[0].metadata == {"references": ["Rain falls.", "Heavy rain on a roof."]}
    assert samples[4].metadata == {"references": ["A bird sings.", "Birds chirp.", "A bird calls."]}
    assert_counts(report, 5, {"empty_answer": 1, "missing_media": 3, "malformed_record": 1})
    assert report.examples["empty_answer"] == [f"{path} line 2 caption_2: rain.wav: empty caption_2"]
    samples, report = read("audiocaps", path, limit=3, prompt="Caption this.")
    assert [s.id for s in samples] == ["rain.wav#0", "rain.wav#1"] and report.total == 3
    assert samples[0].messages[0].content == "Caption this."


def test_audiocaps_youtube_rows(tmp_path):
    clip = wav(tmp_path / "yt1_30.wav")
    path = write_lines(tmp_path / "val.csv", [
        "audiocap_id,youtube_id,start_time,caption",
        "1,yt1,30,A man speaks.",
        "2,yt1,30,Someone talks.",
        "3,,30,No video.",
    ])
    samples, report = read("audiocaps", path)
    assert [s.id for s in samples] == ["yt1_30.wav#0", "yt1_30.wav#1"]
    assert samples[1].media == {"audio": [clip.resolve()]}
    assert samples[1].metadata == {"references": ["A man speaks.", "Someone talks."]}
    assert_counts(report, 2, {"missing_field": 1})
    no_caption = write_lines(tmp_path / "x" / "x.csv", ["file,text", "a.wav,t"])
    with pytest.raises(ValueError, match="no caption column"):
        read("audiocaps", no_caption)


# --- hf ----------------------------------------------------------------------------------------
