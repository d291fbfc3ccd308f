"""Bad names and bad shapes get one wording everywhere: the offending names or shapes, never a wall of text."""

import pytest
import torch
import torch.nn as nn

import funcprune as fp
from funcprune._errors import shape_mismatch, unknown_names


def big_params(n=300):
    return {f"layers.{i}.{kind}": torch.randn(4) for i in range(n // 2) for kind in ("weight", "bias")}


def test_an_unknown_name_lists_itself_and_the_closest_known_names_not_every_param():
    params = big_params()
    with pytest.raises(KeyError) as info:
        fp.prune(params, fp.l1_unstructured, 0.5, include=["layers.7.wieght"])
    message = info.value.args[0]
    assert message.startswith("include name(s) ['layers.7.wieght'] are not among the params (300 names)")
    assert "'layers.7.weight'" in message  # the closest known name
    assert len(message) < 300 and message.count("layers.") == 2 + 3  # the unknown name twice, 3 suggestions


def test_every_lookup_of_unknown_names_uses_the_same_message():
    params = big_params()
    masks = {"layers.1.weigth": torch.ones(4, dtype=torch.bool)}
    for call, what in (
        (lambda: fp.apply_masks(params, masks), "masks"),
        (lambda: fp.global_unstructured(params, 0.5, scores=masks), "scores"),
        (lambda: fp.distributions.prune_by(params, fp.l1_unstructured, {"layers.1.weigth": 0.5}), "amounts"),
    ):
        with pytest.raises(
            KeyError,
            match=rf"^.{what} name\(s\) \['layers\.1\.weigth'\] are not among the params "
            r"\(300 names\); 'layers\.1\.weigth': closest 'layers\.1\.weight'",
        ):
            call()


def test_a_module_call_names_the_unknown_names_and_the_closest_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    params = dict(model.named_parameters())
    with pytest.raises(
        KeyError,
        match=r"\['0\.wieght'\] are not among the parameters and buffers of Sequential "
        r"\(4 names\); '0\.wieght': closest '0\.weight'",
    ):
        fp.functional_call(model, params, (torch.ones(1, 3),), masks={"0.wieght": torch.ones(4, 3, dtype=torch.bool)})


def test_unknown_names_caps_the_list_and_says_when_nothing_is_close():
    err = unknown_names([f"x{i}" for i in range(25)], ["conv.weight"], "masks")
    assert isinstance(err, KeyError)
    assert err.args[0] == (
        "masks name(s) ['x0', 'x1', 'x2', 'x3', 'x4', 'x5', 'x6', 'x7', 'x8', 'x9', "
        "... (25 in all)] are not among the params (1 names); none is close to a known name"
    )


def test_a_wrong_shape_names_the_leaf_and_both_shapes():
    params = {"fc.weight": torch.randn(3, 2)}
    with pytest.raises(ValueError, match=r"^fc\.weight: mask has shape \(2, 3\) but the param has shape \(3, 2\)$"):
        fp.apply_masks(params, {"fc.weight": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"^mask has shape \(2,\) but the scores have shape \(3,\)$"):
        fp.l1_unstructured(torch.randn(3), 0.5, mask=torch.ones(2, dtype=torch.bool))


def test_shape_mismatch_wording():
    assert (
        shape_mismatch("scores", (2,), "the param", (3,), name="w").args[0]
        == "w: scores have shape (2,) but the param has shape (3,)"
    )
    assert (
        shape_mismatch("stacked masks leaf", torch.Size([3]), None, "(K, *(3,))", note=": stack them").args[0]
        == "stacked masks leaf has shape (3,), expected (K, *(3,)): stack them"
    )
