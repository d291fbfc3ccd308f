import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device the tests can run on here: CPU always, CUDA when present."""
    return torch.device(request.param)
