"""Fixtures shared by the test folders; the builders they use are cotune.testing's (importable without pytest)."""

import pytest
import torch

from cotune.config import load_config
from cotune.testing import corpus
from cotune.train import Trainer


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """One directory of tiny saved backbones shared by the whole session."""
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def trained_run(tiny_root, tmp_path_factory):
    """A real ``cotune train`` run directory: tiny LLaMA + CLIP with MM-Adapters, 2 steps on ScienceQA + Alpaca."""
    root = tmp_path_factory.mktemp("eval-run")
    raw = corpus.run_config(tiny_root, root / "data", max_steps=2, checkpoint_every=100)
    Trainer(load_config(data=raw), root / "run").run()
    return root / "run"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread while a module of serving tests runs (the server, its clients and other work
    share 2 cores); restored afterwards. Serving modules use it with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAULTS = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def fault_tally(request):
    """Outcome of every planted fault (the planted-fault tests): fault id -> handled, crashed or
    silent; the terminal summary reports the counts."""
    return request.config.stash.setdefault(FAULTS, {})


def pytest_terminal_summary(terminalreporter, config):
    tally = config.stash.get(FAULTS, {})
    if tally:
        outcomes = list(tally.values())
        terminalreporter.write_line(
            f"planted faults: {len(outcomes)} tried, {outcomes.count('handled')} handled, {outcomes.count('crashed')} crashed, "
            f"{outcomes.count('silent')} passed silently"
        )
        for fault, outcome in sorted(tally.items()):
            if outcome != "handled":
                terminalreporter.write_line(f"  {outcome}: {fault}")
