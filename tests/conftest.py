import os

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    """Every device the tests can run on here: CPU always, CUDA when present."""
    return torch.device(request.param)


# CI runs a fixed set of hypothesis examples, so a red CI is reproducible; locally they vary.
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

# CI runs every test: the structural tests' optional clients must be there, never skipped.
if os.environ.get("CI"):
    import torch_pruning  # noqa: E402,F401
    import torchvision  # noqa: E402,F401
    import transformers  # noqa: E402,F401
