"""Root conftest: names available to the doctests in `samkit/`.

The doctests of the optional SAM backends run only where their upstream package is installed
(`pip install "samkit[sam2]"`, ...); their tests skip themselves with `pytest.importorskip`.
"""

import importlib.util

import pytest
import torch

_OPTIONAL_DOCTESTS = {
    "samkit/backbones/sam2_backend.py": "sam2",
    "samkit/backbones/hq_sam.py": "segment_anything_hq",
    "samkit/backbones/mobile_sam.py": "segment_anything_hq",
    "samkit/backbones/efficientvit_sam.py": "efficientsam",
}

collect_ignore = [
    path
    for path, package in _OPTIONAL_DOCTESTS.items()
    if importlib.util.find_spec(package) is None
]


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    doctest_namespace["torch"] = torch
    torch.manual_seed(0)
