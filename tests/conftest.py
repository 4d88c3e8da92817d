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
