"""Tests that need a CUDA device: marked `cuda` and skipped, with the reason, where there is none."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/cuda/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.cuda)
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="no CUDA device: run `pytest -m cuda` on a GPU machine"))
