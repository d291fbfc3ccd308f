"""The public surface of ``import funcprune as fp``: one name per thing, no name shadowing a submodule."""

import importlib
import pkgutil
import subprocess
import sys

import funcprune as fp

TOP = [
    "identity",
    "random_unstructured",
    "l1_unstructured",
    "random_structured",
    "ln_structured",
    "custom_from_mask",
    "global_unstructured",
    "prune",
    "apply_masks",
    "mask_grads",
    "sparsity",
    "Sparsity",
    "functional_call",
    "from_module",
    "to_module",
    "stack",
    "unstack",
    "stack_size",
    "masks_for_amounts",
    "masks_for_seeds",
    "masks_for_scores",
    "stacked_call",
    "vmap_stacked",
    "call_with_buffers",
    "masked_update",
    "lottery_round",
]
EXTRAS = [
    "patterns",
    "distributions",
    "schedules",
    "saliency",
    "dst",
    "export",
    "distributed",
    "structural",
    "select",
    "oneshot",
]


def _public_submodules():
    return [m.name for m in pkgutil.iter_modules(fp.__path__) if not m.name.startswith("_")]


def test_all_is_the_core_and_the_extras_as_submodules():
    assert sorted(fp.__all__) == sorted(TOP + EXTRAS)
    assert len(set(fp.__all__)) == len(fp.__all__)
    for name in fp.__all__:
        assert hasattr(fp, name), name
    for name in EXTRAS:
        assert fp.__dict__[name] is importlib.import_module(f"funcprune.{name}")
    assert fp.__version__ == "1.1.0"


def test_extras_are_reached_through_their_submodules_only():
    assert callable(fp.patterns.nm_structured) and callable(fp.schedules.polynomial)
    assert callable(fp.export.save_masks) and callable(fp.dst.rigl_update) and callable(fp.distributions.erk)
    for name in ("nm_structured", "erk", "rigl_update", "save_masks", "prune_channels", "drop_and_grow"):
        assert not hasattr(fp, name), name


def test_no_top_level_name_equals_a_public_submodule():
    # ``import funcprune.stack as S`` would give the function fp.stack: a public name is either
    # the submodule itself or no submodule's name.
    for module in _public_submodules():
        value = getattr(fp, module, None)
        assert value is None or value is importlib.import_module(f"funcprune.{module}"), module
    import funcprune.stacking as S

    assert S.__name__ == "funcprune.stacking" and fp.stack is S.stack
    assert "stack" not in _public_submodules()


def test_result_types_are_importable_where_their_function_is():
    from funcprune.tree import Sparsity, sparsity  # noqa: F401

    assert fp.sparsity is sparsity and fp.Sparsity is Sparsity


def test_no_noqa_e402_in_the_package_init():
    assert "E402" not in open(fp.__file__).read()


def test_import_as_a_user_would():
    code = "import funcprune.stacking as S, funcprune as fp; assert S.stack is fp.stack and callable(S.unstack)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
