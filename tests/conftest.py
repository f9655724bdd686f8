import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """One directory of tiny saved backbones shared by the whole session."""
    return tmp_path_factory.mktemp("tiny")


FAULTS = pytest.StashKey[dict]()


@pytest.fixture(scope="session")
def fault_tally(request):
    """Outcome of every planted fault (tests/test_faults_*.py): fault id -> handled, crashed or
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
