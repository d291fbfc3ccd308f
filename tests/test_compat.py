"""funcprune.compat against torch.nn.utils.prune: every method and function, differential, same seed."""

import copy
import inspect

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as T
from _torch_ref import outcome
from hypothesis import given, settings
from hypothesis import strategies as st

import funcprune.compat as C
from examples._models import LeNet  # the tutorial's LeNet, shared with the examples and benchmarks

# (factory, input shape, name of a >= 2-D parameter)
MODULES = {
    "linear": (lambda: nn.Linear(7, 5), (3, 7), "weight"),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3), (2, 3, 9), "weight"),
    "conv2d": (lambda: nn.Conv2d(3, 4, 3), (2, 3, 6, 6), "weight"),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), (1, 2, 4, 4, 4), "weight"),
    "lstm": (lambda: nn.LSTM(4, 6), (5, 2, 4), "weight_ih_l0"),
}


def describe(hook):
    history = [type(m).__name__ for m in hook] if isinstance(hook, T.PruningContainer) else None
    return type(hook).__name__, getattr(hook, "_tensor_name", None), history


def layout(module):
    """Everything observable about a (pruned) module tree, in order."""
    return {
        "params": [(n, p.dtype) for n, p in module.named_parameters()],
        "buffers": [(n, b.dtype) for n, b in module.named_buffers()],
        "hooks": [(n, [describe(h) for h in m._forward_pre_hooks.values()]) for n, m in module.named_modules()],
        "state_dict": list(module.state_dict()),
    }


def same(a, b):
    """``torch.equal``, with NaN equal to NaN (weights may hold them)."""
    if a.is_floating_point() and b.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return torch.equal(a, b)


def assert_same(ours, theirs, x=None):
    """Same layout, bit-identical tensors (state_dict and pruned attributes) and outputs."""
    assert layout(ours) == layout(theirs)
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        assert same(a, b), k
    for (n, m), (_, mt) in zip(ours.named_modules(), theirs.named_modules()):
        for h in m._forward_pre_hooks.values():
            a, b = getattr(m, h._tensor_name), getattr(mt, h._tensor_name)
            assert same(a, b) and a.grad_fn is not None, f"{n}.{h._tensor_name}"
    if x is not None:
        out, ref = ours(x), theirs(x)
        out, ref = (out[0], ref[0]) if isinstance(out, tuple) else (out, ref)
        assert torch.equal(out, ref)


def twins(factory, seed=0):
    torch.manual_seed(seed)
    a = factory()
    b = factory()
    b.load_state_dict(a.state_dict())
    return a, b


def both(ours, theirs, step, seed):
    """Run ``step(prune_module, model)`` with each library after the same seed."""
    torch.manual_seed(seed)
    step(C, ours)
    torch.manual_seed(seed)
    step(T, theirs)


STEPS = {
    "random_unstructured": lambda P, m, n: P.random_unstructured(m, n, 0.3),
    "l1_unstructured": lambda P, m, n: P.l1_unstructured(m, n, 4),
    "random_structured": lambda P, m, n: P.random_structured(m, n, 0.5, 0),
    "random_structured_-1": lambda P, m, n: P.random_structured(m, n, 1, -1),
    "ln_structured_l2_dim0": lambda P, m, n: P.ln_structured(m, n, 0.5, 2, 0),
    "ln_structured_inf_dim1": lambda P, m, n: P.ln_structured(m, n, 1, float("inf"), 1),
    "ln_structured_l1_-1": lambda P, m, n: P.ln_structured(m, n, 0.34, 1, -1),
    "identity": lambda P, m, n: P.identity(m, n),
    "custom_from_mask": lambda P, m, n: P.custom_from_mask(
        m, n, (torch.arange(getattr(m, n).numel()) % 3 > 0).view_as(getattr(m, n))
    ),
}


@pytest.mark.parametrize("kind", MODULES)
@pytest.mark.parametrize("step", STEPS)
def test_single_pruning_matches_torch(kind, step):
    factory, shape, name = MODULES[kind]
    ours, theirs = twins(factory)
    both(ours, theirs, lambda P, m: STEPS[step](P, m, name), seed=1)
    assert_same(ours, theirs, torch.randn(shape))


SEQUENCES = [
    ["random_unstructured", "l1_unstructured", "ln_structured_l2_dim0"],
    ["ln_structured_l2_dim0", "random_unstructured", "random_structured_-1", "l1_unstructured"],
    ["l1_unstructured"] * 3 + ["random_unstructured"] * 2,
    ["random_structured", "ln_structured_inf_dim1", "custom_from_mask", "identity", "ln_structured_l1_-1"],
]


@pytest.mark.parametrize("kind", ["linear", "conv2d", "lstm"])
@pytest.mark.parametrize("sequence", range(len(SEQUENCES)))
def test_iterative_pruning_matches_torch_after_every_step(kind, sequence):
    factory, shape, name = MODULES[kind]
    ours, theirs = twins(factory, seed=sequence)
    x = torch.randn(shape)
    for i, step in enumerate(SEQUENCES[sequence]):
        both(ours, theirs, lambda P, m: STEPS[step](P, m, name), seed=10 + i)
        assert_same(ours, theirs, x)
    hook = next(iter(ours._forward_pre_hooks.values()))
    assert isinstance(hook, C.PruningContainer) and len(hook) == len(SEQUENCES[sequence])
    reference = next(iter(theirs._forward_pre_hooks.values()))
    assert [type(m).__name__ for m in hook] == [type(m).__name__ for m in reference]


def test_pruning_bias_and_weight_of_every_layer_of_a_lenet():
    ours, theirs = twins(LeNet)
    x = torch.randn(2, 1, 28, 28)

    def step(P, model):
        for i, (_, m) in enumerate(model.named_children()):
            P.l1_unstructured(m, "bias", 0.25)
            P.random_unstructured(m, "weight", 0.2)
            P.ln_structured(m, "weight", 0.3, 2, i % 2)
            P.l1_unstructured(m, "weight", 0.2, importance_scores=m.weight_orig.detach() ** 2)

    both(ours, theirs, step, seed=3)
    assert_same(ours, theirs, x)


def method_pairs():
    """(compat method, torch method) built with the same arguments."""
    yield C.L1Unstructured(3), T.L1Unstructured(3)
    yield C.L1Unstructured(0.4), T.L1Unstructured(0.4)
    yield C.RandomUnstructured(0.5), T.RandomUnstructured(0.5)
    yield C.RandomUnstructured(0), T.RandomUnstructured(0)
    yield C.LnStructured(1, 2, 0), T.LnStructured(1, 2, 0)
    yield C.LnStructured(0.5, 1, -1), T.LnStructured(0.5, 1, -1)
    yield C.LnStructured(0.0, 2, 1), T.LnStructured(0.0, 2, 1)
    yield C.RandomStructured(2, 1), T.RandomStructured(2, 1)
    yield C.RandomStructured(0.0, 0), T.RandomStructured(0.0, 0)
    yield C.Identity(), T.Identity()
    mask = torch.arange(24).view(4, 6) % 4 != 1
    yield C.CustomFromMask(mask), T.CustomFromMask(mask)


@pytest.mark.parametrize("pair", range(len(list(method_pairs()))))
@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.int64, torch.bool])
def test_compute_mask_and_container_match_torch(pair, mask_dtype):
    ours, theirs = list(method_pairs())[pair]
    torch.manual_seed(pair)
    t = torch.randn(4, 6)
    default = (torch.rand(4, 6) > 0.3).to(mask_dtype)
    default[1] = 0  # a dead channel along dim 0
    for fn in (
        lambda m: m.compute_mask(t, default.clone()),
        lambda m: _in_container(m, t, default.clone()),
        lambda m: m.prune(t, default.clone()),
        lambda m: m.prune(t, default.clone(), importance_scores=-t),
    ):
        torch.manual_seed(7)
        got = fn(ours)
        torch.manual_seed(7)
        want = fn(theirs)
        assert got.dtype == want.dtype and torch.equal(got, want)


def _in_container(method, t, default_mask):
    lib = C if isinstance(method, C.BasePruningMethod) else T
    container = lib.PruningContainer()
    container._tensor_name = method._tensor_name = "t"
    container.add_pruning_method(method)
    return container.compute_mask(t, default_mask)


def test_container_compute_mask_does_not_write_into_default_mask():
    container = C.PruningContainer(*[])
    container._tensor_name = "t"
    for method in (C.L1Unstructured(2), C.RandomUnstructured(2)):
        method._tensor_name = "t"
        container.add_pruning_method(method)
        default = torch.ones(3, 4)
        container.compute_mask(torch.randn(3, 4), default)
        assert torch.equal(default, torch.ones(3, 4))


def test_ported_container_compute_mask_worked_example():
    # torch's test_pruning_container_compute_mask
    container = C.PruningContainer()
    container._tensor_name = "test"
    t = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=torch.float32)
    default_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 1]])
    for method, expected in (
        (C.L1Unstructured(amount=2), [[0, 0, 1, 0], [1, 1, 0, 1]]),
        (C.LnStructured(amount=1, n=2, dim=0), [[0, 0, 0, 0], [1, 1, 0, 1]]),
        (C.LnStructured(amount=1, n=2, dim=1), [[0, 1, 1, 0], [0, 1, 0, 1]]),
    ):
        method._tensor_name = "test"
        container.add_pruning_method(method)
        assert torch.equal(container.compute_mask(t, default_mask), torch.tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize("lib_method", ["L1Unstructured", "RandomUnstructured"])
@pytest.mark.parametrize("amount", [0.2, 0.8, 7, 0])
def test_global_unstructured_matches_torch(lib_method, amount):
    ours, theirs = twins(LeNet, seed=4)
    x = torch.randn(2, 1, 28, 28)

    def step(P, model):
        P.l1_unstructured(model.fc1, "weight", 0.5)  # an existing mask the global step must respect
        P.random_unstructured(model.conv2, "weight", 0.3)
        params = [(model.conv1, "weight"), (model.conv2, "weight"), (model.fc1, "weight"), (model.fc3, "bias")]
        scores = {(model.fc3, "bias"): torch.linspace(-1, 1, 10)}
        P.global_unstructured(
            iter(params) if P is C else params,
            pruning_method=getattr(P, lib_method),
            importance_scores=scores,
            amount=amount,
        )

    both(ours, theirs, step, seed=5)
    assert_same(ours, theirs, x)


def test_global_unstructured_with_a_custom_unstructured_method_matches_torch():
    def foobar(lib):
        class EveryOther(lib.BasePruningMethod):
            PRUNING_TYPE = "unstructured"

            def __init__(self, start=0):
                self.start = start

            def compute_mask(self, t, default_mask):
                mask = default_mask.clone()
                mask.view(-1)[self.start :: 2] = 0
                return mask

        return EveryOther

    ours, theirs = twins(lambda: nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3)))

    def step(P, model):
        P.l1_unstructured(model[0], "weight", 5)
        P.global_unstructured([(model[0], "weight"), (model[1], "weight")], foobar(P), start=1)

    both(ours, theirs, step, seed=0)
    assert_same(ours, theirs, torch.randn(2, 5))


@pytest.mark.parametrize("bad, error", [(5, TypeError), ([(nn.Linear(2, 2), "weight")], TypeError)])
def test_global_unstructured_errors_match_torch(bad, error):
    kwargs = {"pruning_method": C.L1Unstructured, "amount": 1}
    with pytest.raises(error):
        C.global_unstructured(bad, importance_scores=[] if isinstance(bad, list) else None, **kwargs)
    with pytest.raises(error):
        T.global_unstructured(
            bad, importance_scores=[] if isinstance(bad, list) else None, pruning_method=T.L1Unstructured, amount=1
        )
    m = nn.Linear(3, 2)
    for P in (C, T):
        with pytest.raises(TypeError):
            P.global_unstructured([(m, "weight")], pruning_method=P.LnStructured, amount=1, n=2, dim=0)
    assert not C.is_pruned(m)


def test_global_unstructured_failure_undoes_every_pair():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    model[1].register_buffer("scale", torch.ones(2, 2))  # pruning a buffer fails in register_parameter
    before = layout(model)
    with pytest.raises(TypeError):
        C.global_unstructured([(model[0], "weight"), (model[1], "scale")], C.L1Unstructured, amount=2)
    assert layout(model) == before and type(model[0]) is nn.Linear


def test_global_hooks_keep_no_second_mask_copy():
    model = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 10))
    C.global_unstructured([(model[0], "weight"), (model[1], "weight")], C.L1Unstructured, amount=0.5)
    for m in model:
        hook = next(iter(m._forward_pre_hooks.values()))
        assert hook.mask is m.weight_mask


def test_importance_scores_match_torch():
    ours, theirs = twins(lambda: nn.Conv2d(3, 5, 3))
    scores = torch.randn(5, 3, 3, 3)

    def step(P, m):
        P.l1_unstructured(m, "weight", 0.3, importance_scores=scores)
        P.ln_structured(m, "weight", 2, 1, 0, importance_scores=scores.double())
        P.l1_unstructured(m, "weight", 0.3, importance_scores=scores)

    both(ours, theirs, step, seed=0)
    assert_same(ours, theirs, torch.randn(1, 3, 5, 5))


def test_ported_amount_helpers():
    for P in (C, T):
        with pytest.raises(TypeError):
            P._validate_pruning_amount_init(amount="I'm a string")
        for bad in (1.1, 20.0, -10):
            with pytest.raises(ValueError):
                P._validate_pruning_amount_init(amount=bad)
        for good in (0.34, 1500, 0, 0.0, 1, 1.0, True):
            P._validate_pruning_amount_init(amount=good)
        with pytest.raises(ValueError):
            P._validate_pruning_amount(amount=20, tensor_size=19)
        for amount, size in ((0.3, 0), (19, 20), (0, 0), (1, 1)):
            P._validate_pruning_amount(amount=amount, tensor_size=size)
        for amount, size in ((0, 15), (10, 15), (1, 15), (1.0, 15), (0.4, 17), (0.5, 5), (0.5, 7)):
            assert C._compute_nparams_toprune(amount, size) == T._compute_nparams_toprune(amount, size)
    t = torch.randn(3, 4, 5)
    assert torch.equal(C._compute_norm(t, 2, -1), T._compute_norm(t, 2, -1))


def test_compat_defines_every_module_level_name_of_torch_prune_private_helpers_included():
    """The drop-in has every class and function torch.nn.utils.prune defines, under torch's names
    (its ``_validate_pruning_dim`` ... too: torch's own tests call them), each a compat one."""
    names = [
        name
        for name, value in vars(T).items()
        if (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == T.__name__
    ]
    assert "_validate_pruning_dim" in names and "_compute_norm" in names
    missing = [name for name in names if getattr(C, name, None) is None]
    assert missing == []
    assert all(getattr(C, name) is not getattr(T, name) for name in names)
    for name, value in ((n, getattr(C, n)) for n in names if n.startswith("_")):
        assert value.__module__ == "funcprune.compat._amounts", name


def test_unstructured_same_magnitude_prunes_exactly_the_count():
    # torch's test_unstructured_pruning_same_magnitude: integer tensor full of ties
    t = 2 * torch.randint(low=-1, high=2, size=(10, 7))
    mask = C.L1Unstructured(amount=0.2).compute_mask(t, default_mask=torch.ones_like(t))
    assert mask.dtype == t.dtype and int((mask == 0).sum()) == C._compute_nparams_toprune(0.2, t.nelement())


FIRST_STEPS = {
    "identity": lambda P, m: P.identity(m, "weight"),
    "l1 0": lambda P, m: P.l1_unstructured(m, "weight", 0),
    "l1 0.5": lambda P, m: P.l1_unstructured(m, "weight", 0.5),
    "ln 0.0": lambda P, m: P.ln_structured(m, "weight", 0.0, 2, 0),
    "ln 0.5": lambda P, m: P.ln_structured(m, "weight", 0.5, 2, 0),
    "random_structured 0": lambda P, m: P.random_structured(m, "weight", 0, 1),
}


# torch's L1Unstructured fails on channels_last weights (a .view in its compute_mask): not compared.
@pytest.mark.parametrize(
    "step, layout",
    [
        (step, layout)
        for step in FIRST_STEPS
        for layout in (torch.contiguous_format, torch.channels_last)
        if not (step.startswith("l1") and layout == torch.channels_last)
    ],
)
def test_first_masks_are_full_tensors_laid_out_like_torchs(step, layout):
    # The built-in methods get a one-element view of ones as their default mask: what they return
    # (a fresh mask, or the default itself when nothing is pruned) must still be torch's tensor.
    ours, theirs = twins(lambda: nn.Conv2d(3, 4, 3).to(memory_format=layout))
    both(ours, theirs, FIRST_STEPS[step], seed=0)
    assert torch.equal(ours.weight_mask, theirs.weight_mask)
    assert ours.weight_mask.stride() == theirs.weight_mask.stride()
    ours.weight_mask[0] = 0  # a real tensor, writable entry by entry
    assert int((ours.weight_mask[0] == 0).sum()) == ours.weight_mask[0].numel()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_masks_have_the_parameter_dtype_and_device(device, dtype):
    m = nn.Linear(6, 4).to(device=device, dtype=dtype)
    C.l1_unstructured(m, "weight", 0.5)
    C.ln_structured(m, "weight", 1, 2, 0)
    C.random_unstructured(m, "bias", 1)
    for buf in (m.weight_mask, m.bias_mask):
        assert buf.dtype == dtype and buf.device.type == device.type
    assert int((m.weight_mask == 0).sum()) >= 12


def test_method_objects_are_torch_base_methods_and_custom_subclasses_work_in_other_files():
    assert issubclass(C.L1Unstructured, T.BasePruningMethod) and issubclass(C.PruningContainer, T.PruningContainer)

    class Halves(C.BasePruningMethod):  # a user method: no registry involved
        PRUNING_TYPE = "structured"
        dim = 0

        def compute_mask(self, t, default_mask):
            mask = default_mask.clone()
            mask[: t.shape[0] // 2] = 0
            return mask

    m = nn.Linear(3, 4)
    Halves.apply(m, "weight")
    Halves.apply(m, "weight")  # second time: on the 2 surviving rows, torch's structured slicing
    assert m.weight_mask.sum(dim=1).tolist() == [0, 0, 0, 3]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("amount", [3, 0.5])
def test_tied_scores_give_torchs_masks_in_containers_and_global(seed, amount):
    """Integer weights tie everywhere: which tied entries go must still be torch's choice."""
    ours, theirs = twins(lambda: nn.Sequential(nn.Conv2d(4, 12, 3), nn.Linear(6, 5)), seed)
    with torch.no_grad():
        for m in (ours, theirs):
            torch.manual_seed(seed)
            for p in m.parameters():
                p.copy_(torch.randint(-2, 3, p.shape))

    def step(P, model):
        P.l1_unstructured(model[0], "weight", amount)
        P.l1_unstructured(model[0], "weight", amount)
        P.ln_structured(model[0], "weight", 2, 1, 0)
        P.ln_structured(model[0], "weight", 1, 1, 1, importance_scores=model[0].weight_orig.detach().round())
        P.global_unstructured(
            [(model[0], "weight"), (model[1], "weight"), (model[1], "bias")], P.L1Unstructured, amount=amount
        )

    both(ours, theirs, step, seed)
    assert_same(ours, theirs)


@pytest.mark.parametrize("pair", range(len(list(method_pairs()))))
def test_compute_mask_leaves_its_inputs_alone(pair):
    ours, _ = list(method_pairs())[pair]
    t, default = torch.randn(4, 6), (torch.rand(4, 6) > 0.3).float()
    t0, d0 = t.clone(), default.clone()
    ours.compute_mask(t, default)
    _in_container(ours, t, default)
    assert torch.equal(t, t0) and torch.equal(default, d0)


def test_meta_modules_prune_without_reading_values():
    model = nn.Sequential(nn.Linear(8, 6, device="meta"), nn.Conv2d(3, 4, 3, device="meta"))
    C.l1_unstructured(model[0], "weight", 0.5)
    C.l1_unstructured(model[0], "weight", 0.5)
    C.ln_structured(model[1], "weight", 1, 2, 0)
    C.ln_structured(model[1], "weight", 1, 2, 0)
    C.global_unstructured([(model[0], "weight"), (model[1], "weight")], C.L1Unstructured, amount=0.3)
    assert model[0].weight_mask.is_meta and model[0].weight_mask.dtype == torch.float32
    assert model[1].weight.shape == (4, 3, 3, 3) and len(next(iter(model[0]._forward_pre_hooks.values()))) == 3


def test_l1_on_channels_last_weights_gives_torchs_mask_for_the_same_values():
    # torch's L1Unstructured fails on channels_last weights (a .view in compute_mask); compat
    # prunes them, with the mask torch computes on a contiguous copy of the same values.
    ours, theirs = twins(lambda: nn.Conv2d(3, 4, 3))
    ours.to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="view size"):
        T.l1_unstructured(copy.deepcopy(ours), "weight", 0.5)
    C.l1_unstructured(ours, "weight", 0.5)
    T.l1_unstructured(theirs, "weight", 0.5)
    assert torch.equal(ours.weight_mask, theirs.weight_mask)
    assert torch.equal(ours.weight, theirs.weight)


# ---- drop-in: bool amounts, n/dim as torch takes them, mask values kept ---------------------------------------


def _same_outcome(step, factory=lambda: nn.Linear(3, 4), seed=0):
    """``step(P, module)`` with each library: same result (module state) or same exception type, same RNG after."""
    ours, theirs = twins(factory, seed)
    results = []
    for P, m in ((C, ours), (T, theirs)):
        torch.manual_seed(seed)
        got, err = outcome(lambda: step(P, m))
        results.append((err, torch.rand(())))
    (err_c, rng_c), (err_t, rng_t) = results
    assert err_c == err_t and torch.equal(rng_c, rng_t)
    if err_t is None:
        assert_same(ours, theirs)
    return err_t


BOOL_STEPS = {
    "l1 True": lambda P, m: P.l1_unstructured(m, "weight", True),
    "l1 False": lambda P, m: P.l1_unstructured(m, "weight", False),
    "l1 True in a container": lambda P, m: (P.l1_unstructured(m, "weight", 2), P.l1_unstructured(m, "weight", True)),
    "random True": lambda P, m: P.random_unstructured(m, "weight", True),
    "random True in a container": lambda P, m: (
        P.l1_unstructured(m, "weight", 2),
        P.random_unstructured(m, "weight", True),
    ),
    "random_structured True": lambda P, m: P.random_structured(m, "weight", True, 0),
    "ln True": lambda P, m: P.ln_structured(m, "weight", True, 2, 0),
    "ln True in a container": lambda P, m: (
        P.ln_structured(m, "weight", 1, 2, 0),
        P.ln_structured(m, "weight", True, 1, 0),
    ),
    "global l1 True": lambda P, m: P.global_unstructured([(m, "weight"), (m, "bias")], P.L1Unstructured, amount=True),
    "global random True": lambda P, m: P.global_unstructured([(m, "weight")], P.RandomUnstructured, amount=True),
    "global l1 False": lambda P, m: P.global_unstructured([(m, "weight")], P.L1Unstructured, amount=False),
}


@pytest.mark.parametrize("step", BOOL_STEPS)
def test_bool_amounts_do_what_torch_does(step):
    # torch counts True as 1 in its checks; its topk/kthvalue then raise TypeError (after the random draws)
    err = _same_outcome(BOOL_STEPS[step])
    assert err is (None if "False" in step or step.startswith("ln") else TypeError)


@pytest.mark.parametrize("n", [None, True, False, 1, 2, "fro", float("inf"), "nuc", -1])
@pytest.mark.parametrize("dim", [0, 1, True, False, -1])
def test_ln_structured_takes_n_and_dim_as_torch_does(n, dim):
    def step(P, m):
        P.ln_structured(m, "weight", 0.5, n=n, dim=dim)
        P.ln_structured(m, "weight", 1, n=n, dim=dim)  # and in a container

    _same_outcome(step, lambda: nn.Conv2d(3, 4, 3) if dim == -1 else nn.Linear(5, 6))


def test_random_structured_takes_a_bool_dim_as_torch_does():
    _same_outcome(lambda P, m: (P.random_structured(m, "weight", 2, True), P.random_structured(m, "weight", 1, True)))


MASK_VALUES = {
    "halves": torch.full((4, 3), 0.5),
    "mixed": torch.tensor([[0.5, 2, 0], [1, -1, 0.25], [1, 1, 1], [0, 3, 1]]),
    "ints": torch.tensor([[2, 0, 1], [1, 1, 0], [1, 1, 1], [0, 5, 1]]),
    "bool": torch.tensor([[True, False, True]] * 4),
}


@pytest.mark.parametrize("values", MASK_VALUES)
def test_custom_from_mask_stores_what_torch_stores_and_later_pruning_acts_on_the_ones(values):
    mask = MASK_VALUES[values]

    def step(P, m):
        P.custom_from_mask(m, "weight", mask)  # torch stores default_mask * mask: 0.5 stays 0.5
        P.custom_from_mask(m, "weight", mask)
        P.l1_unstructured(m, "weight", 1)  # candidates: entries equal to 1 (torch's `mask == 1`)
        P.ln_structured(m, "weight", 1, 2, 0)
        P.random_unstructured(m, "weight", 0.5)
        P.global_unstructured([(m, "weight"), (m, "bias")], P.L1Unstructured, amount=1)

    # with halves torch's later L1 has no candidates left (no entry equals 1) and raises ValueError
    assert _same_outcome(step) is (ValueError if values == "halves" else None)
    m = C.custom_from_mask(nn.Linear(3, 4), "weight", mask)
    assert torch.equal(m.weight_mask, T.custom_from_mask(nn.Linear(3, 4), "weight", mask).weight_mask)


# ---- NaN, inf and ties at the cut: torch's masks ------------------------------------------------------------


def _set(module, name, values):
    with torch.no_grad():
        getattr(module, name).copy_(torch.tensor(values, dtype=torch.float32).view_as(getattr(module, name)))


def test_a_kept_nan_does_not_hide_a_tie_between_finite_values():
    ours, theirs = twins(lambda: nn.Linear(5, 1))
    for P, m in ((C, ours), (T, theirs)):
        _set(m, "weight", [0, 2, float("nan"), float("nan"), 2])
        P.custom_from_mask(m, "weight", torch.tensor([[0, 1, 1, 1, 1]]))
        P.l1_unstructured(m, "weight", 1)
    assert theirs.weight_mask.tolist() == [[0, 1, 1, 1, 0]]
    assert torch.equal(ours.weight_mask, theirs.weight_mask)


def test_nan_at_the_cut_gives_torchs_entries():
    ours, theirs = twins(lambda: nn.Linear(6, 1))
    for P, m in ((C, ours), (T, theirs)):
        _set(m, "weight", [float("nan"), 1, float("nan"), 2, float("nan"), float("nan")])
        P.l1_unstructured(m, "weight", 1)
        P.l1_unstructured(m, "weight", 3)  # the cut falls among the NaNs
    assert torch.equal(ours.weight_mask, theirs.weight_mask)


_SPECIAL = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, float("nan"), float("inf"), -float("inf")])


@pytest.mark.slow  # a long property test
@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(_SPECIAL, min_size=8, max_size=40),
    first=st.integers(0, 8),
    second=st.integers(0, 8),
    ratio=st.floats(0, 1),
)
def test_nan_inf_and_ties_give_torchs_masks_everywhere(values, first, second, ratio):
    n = len(values)
    first, second = min(first, n), min(second, n - min(first, n))
    ours, theirs = twins(lambda: nn.Sequential(nn.Linear(n, 1), nn.Linear(4, 2)))
    for P, m in ((C, ours), (T, theirs)):
        _set(m[0], "weight", values)
        _set(m[1], "weight", [values[i % n] for i in range(8)])
        P.l1_unstructured(m[0], "weight", first)
        P.l1_unstructured(m[0], "weight", second)
        P.global_unstructured([(m[0], "weight"), (m[1], "weight")], P.L1Unstructured, amount=ratio)
    assert_same(ours, theirs)


def _big_tied_pair(seed, levels=64):
    """A 2-layer model whose quantized weights tie at every cut, over 2**15 entries (past the fast paths)."""
    ours, theirs = twins(lambda: nn.Sequential(nn.Linear(128, 200), nn.Linear(200, 40)), seed)
    with torch.no_grad():
        for model in (ours, theirs):
            torch.manual_seed(seed)
            for p in model.parameters():
                p.copy_(torch.randint(-levels, levels + 1, p.shape) / levels)
    return ours, theirs


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("amount", [0.3, 0.8, 1000])
def test_big_tied_weights_give_torchs_masks(seed, amount):
    ours, theirs = _big_tied_pair(seed)

    def step(P, model):
        P.l1_unstructured(model[0], "weight", amount)  # 25,600 entries: the threshold fast path cannot certify
        P.l1_unstructured(model[0], "weight", amount)
        P.global_unstructured(
            [(model[0], "weight"), (model[1], "weight"), (model[1], "bias")], P.L1Unstructured, amount=amount
        )

    both(ours, theirs, step, seed)
    assert_same(ours, theirs)


def _count_torch_order_calls(monkeypatch):
    from funcprune.compat import _functions

    calls = []
    real = _functions._torch_order_global
    monkeypatch.setattr(_functions, "_torch_order_global", lambda *a: calls.append(1) or real(*a))
    return calls


def test_global_l1_runs_torchs_topk_only_when_a_tie_straddles_the_cut(monkeypatch):
    calls = _count_torch_order_calls(monkeypatch)
    model = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 10))
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):  # distinct magnitudes: no ties anywhere
            p.copy_(torch.randperm(p.numel()).view_as(p) * 4 + i + 1.0)
    C.global_unstructured([(m, "weight") for m in model], C.L1Unstructured, amount=0.6)
    assert calls == []
    tied, _ = _big_tied_pair(0)
    C.global_unstructured([(m, "weight") for m in tied], C.L1Unstructured, amount=0.6)
    assert calls == [1]


@pytest.mark.parametrize("amount", [0.3, 0.8, 5])
def test_tie_order_index_gives_the_cores_masks_and_never_concatenates(monkeypatch, amount):
    import funcprune as fp

    calls = _count_torch_order_calls(monkeypatch)
    model, _ = _big_tied_pair(1)
    params = {f"{i}": m.weight.detach().clone() for i, m in enumerate(model)}
    C.l1_unstructured(model[0], "weight", 0.2)
    first = {"0": model[0].weight_mask.bool(), "1": torch.ones_like(params["1"], dtype=torch.bool)}
    with C.tie_order("index"):
        C.global_unstructured([(m, "weight") for m in model], C.L1Unstructured, amount=amount)
        assert C.current_tie_order() == "index"
    assert C.current_tie_order() == "torch" and calls == []
    want = fp.global_unstructured(params, amount, masks=first)
    assert all(torch.equal(m.weight_mask.bool(), want[f"{i}"]) for i, m in enumerate(model))


def test_tie_order_index_per_tensor_is_the_cores_l1_and_bad_orders_raise():
    import funcprune as fp

    model, _ = _big_tied_pair(0)
    w = model[0].weight.detach().clone()
    with C.tie_order("index"):
        C.l1_unstructured(model[0], "weight", 0.3)
        C.l1_unstructured(model[0], "weight", 0.3)
    first = fp.l1_unstructured(w, 0.3)
    assert torch.equal(model[0].weight_mask.bool(), fp.l1_unstructured(w, 0.3, mask=first))
    with pytest.raises(ValueError, match="tie order"):
        with C.tie_order("lowest"):
            pass


def test_compat_global_benchmark_rows_check_torchs_masks(monkeypatch):
    from benchmarks import _compat_global

    got = {
        lib: _compat_global.worker({"compat_global": "tiny", "lib": lib, "threads": 1}) for lib in _compat_global.LIBS
    }
    assert got["compat"]["digest"] == got["torch"]["digest"] and got["compat"]["path"] == "lean radix"
    assert got["compat-index"]["digest"][0] == got["torch"]["digest"][0]
    monkeypatch.setattr(_compat_global._memory, "run_worker", lambda spec: got[spec["lib"]])
    rows = _compat_global.rows(processes=1, cases=[("tiny", 0)])
    text = _compat_global.markdown(rows)
    assert "torch's" in text and "lean radix" in text and "DIFFERENT" not in text
