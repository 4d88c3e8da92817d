import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_report_header(config):
    import peft
    import timm
    import torch
    import transformers

    return (f"lane: peft {peft.__version__}, transformers {transformers.__version__}, timm {timm.__version__}, "
            f"torch {torch.__version__}")


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny runs: one intra-op thread is faster than several competing for shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
