import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """One directory of tiny saved backbones shared by the whole session."""
    return tmp_path_factory.mktemp("tiny")
