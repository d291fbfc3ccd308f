"""Amount rules: torch's validation and rounding, plus 0-d tensor amounts."""

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from _torch_ref import outcome
from hypothesis import given
from hypothesis import strategies as st

from funcprune import _amount


@given(st.one_of(st.integers(-5, 50), st.floats(-0.5, 1.5, allow_nan=False), st.text(max_size=2), st.none()))
def test_validation_raises_what_torch_raises(amount):
    _, ref_err = outcome(lambda: torch_prune._validate_pruning_amount_init(amount))
    _, err = outcome(lambda: _amount.validate_amount(amount))
    assert err == ref_err


@given(st.one_of(st.integers(0, 60), st.floats(0, 1)), st.integers(0, 60))
def test_count_is_torchs_and_tensor_amounts_agree(amount, size):
    expected = torch_prune._compute_nparams_toprune(amount, size)
    assert _amount.prune_count(amount, size) == expected
    as_tensor = torch.tensor(amount, dtype=torch.float64 if isinstance(amount, float) else torch.int64)
    assert int(_amount.prune_count(as_tensor, size)) == expected
    assert int(_amount.prune_count(amount, torch.tensor(size))) == expected
    assert _amount.max_prune_count(amount, size) >= min(expected, size)


def test_tensor_amount_validation():
    with pytest.raises(ValueError, match="0-d"):
        _amount.validate_amount(torch.tensor([0.1, 0.2]))
    with pytest.raises(TypeError, match="dtype"):
        _amount.validate_amount(torch.tensor(True))
    with pytest.raises(ValueError, match="amount=1.5"):
        _amount.validate_amount(torch.tensor(1.5))
    _amount.validate_amount(torch.tensor(0.5, device="meta"))  # values unknown: shape/dtype checks only
