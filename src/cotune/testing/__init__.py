"""Builders for tests of cotune and of your own recipes: tiny random backbones, small datasets, run helpers.

Everything here runs on CPU in seconds and downloads nothing; none of it needs pytest (the fixtures of
cotune's own suite live in its ``tests/conftest.py``). The modules, imported as ``from cotune.testing import
tiny``:

- :mod:`~cotune.testing.tiny`: tiny random LLMs (``llama``, ``qwen2``, ``mistral``, ``gpt2``, ``gemma``,
  ``phi``), encoders (``clip``, ``siglip``, ``vit``, ``dinov2``, ``whisper``, ``wav2vec2``, ``hubert``) and a
  byte-level tokenizer, saved with ``save_pretrained`` so they load through the real code; ``build`` makes a
  CotuneModel over them; ``save_image_run`` saves a model directory that ``cotune eval`` loads.
- :mod:`~cotune.testing.corpus`: datasets in their real formats (ScienceQA, Alpaca, audio QA, easy-VQA) and
  full run configs over them (``run_config``, ``llava_lora_config``).
- :mod:`~cotune.testing.readers`: a dataset file read through a registered reader, with its report.
- :mod:`~cotune.testing.commands`: ``cotune`` commands run in-process (``cli``) and their predictions read back.
- :mod:`~cotune.testing.serve`: a saved image + audio run to serve, media files and chat-completion bodies.
- :mod:`~cotune.testing.faults`: the verdict of a planted fault (handled, crashed or passed silently).

A minimal test of a recipe of your own (see docs/testing.md)::

    from cotune.config import load_config
    from cotune.testing import corpus
    from cotune.train import Trainer

    def test_two_steps(tmp_path):
        raw = corpus.run_config(tmp_path / "backbones", tmp_path / "data", max_steps=2)
        Trainer(load_config(data=raw), tmp_path / "run").run()
        assert (tmp_path / "run" / "metrics.jsonl").exists()
"""
