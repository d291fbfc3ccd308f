"""compat's module surgery: layout, remove, rollback, mocks, RNNs, copying and serialization, interop."""

import copy
import io
import pickle
import unittest.mock as mock

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as T
from test_compat import LeNet, assert_same, layout, twins

import funcprune.compat as C


def test_same_parameter_object_moves_to_orig_and_back():
    m = nn.Linear(5, 2)
    weight = m.weight
    C.random_unstructured(m, "weight", 0.5)
    assert m.weight_orig is weight and [n for n, _ in m.named_parameters()] == ["bias", "weight_orig"]
    assert m.weight_mask.dtype == weight.dtype and "weight" in m.__dict__ and m.weight.grad_fn is not None
    hook = next(iter(m._forward_pre_hooks.values()))
    assert isinstance(hook, C.RandomUnstructured) and hook._tensor_name == "weight"
    pruned = m.weight.detach().clone()
    C.remove(m, "weight")
    assert m.weight is weight and torch.equal(weight.detach(), pruned)
    assert [n for n, _ in m.named_parameters()] == ["bias", "weight"] and not m._forward_pre_hooks
    assert list(m.state_dict()) == ["bias", "weight"] and type(m) is nn.Linear


def test_hook_recomputes_before_every_forward_and_grads_are_masked():
    m = nn.Linear(5, 2)
    mask = torch.ones(2, 5)
    mask[1, 0] = mask[0, 3] = 0
    with mock.patch("funcprune.compat.RandomUnstructured.compute_mask", return_value=mask) as compute_mask:
        C.random_unstructured(m, "weight", amount=0.9)  # amount won't count: the mock decides
    compute_mask.assert_called_once()
    m(torch.ones(1, 5)).sum().backward()
    assert torch.equal(m.weight_orig.grad, mask)
    with torch.no_grad():
        m.weight_orig.add_(1.0)
    out = m(torch.ones(1, 5))
    assert torch.allclose(out, torch.ones(1, 5) @ (m.weight_orig * mask).T + m.bias)


def test_mocked_compute_mask_is_used_in_a_container_too():
    m = nn.Linear(4, 3)
    C.l1_unstructured(m, "weight", 2)
    with mock.patch(
        "funcprune.compat.L1Unstructured.compute_mask",
        side_effect=lambda t, default_mask: torch.zeros_like(default_mask),
    ) as compute_mask:
        C.l1_unstructured(m, "weight", 2)
    assert compute_mask.call_count == 1 and int(m.weight_mask.sum()) == 0


@pytest.mark.parametrize("name", ["weight", "bias"])
@pytest.mark.parametrize("factory", [lambda: nn.Linear(5, 7), lambda: nn.Conv3d(2, 2, 2), lambda: nn.LSTM(3, 4)])
def test_failed_pruning_leaves_the_module_exactly_as_it_was(factory, name):
    m = factory()
    name = name + "_ih_l0" if isinstance(m, nn.LSTM) else name
    before = layout(m)
    with mock.patch("funcprune.compat.L1Unstructured.compute_mask", side_effect=RuntimeError("HA!")):
        with pytest.raises(RuntimeError, match="HA!"):
            C.l1_unstructured(m, name, amount=0.9)
    assert layout(m) == before and type(m) is type(factory())  # torch moves the parameter to the end
    assert not C.is_pruned(m)
    # a second pruning that fails keeps the first one, its hook and its history (torch loses the hook)
    C.l1_unstructured(m, name, amount=1)
    C.random_unstructured(m, name, amount=1)
    before, mask = layout(m), getattr(m, name + "_mask").clone()
    hook = next(iter(m._forward_pre_hooks.values()))
    for bad in (
        lambda: C.l1_unstructured(m, name, amount=10**6),
        lambda: C.ln_structured(m, name, 1, 2, 5),
        lambda: C.l1_unstructured(m, name, amount=-1),
        lambda: C.l1_unstructured(m, name, 1, importance_scores=torch.ones(1, 1, 1, 1, 1, 1)),
    ):
        with pytest.raises((ValueError, IndexError, AssertionError)):
            bad()
        assert layout(m) == before and len(hook) == 2 and torch.equal(getattr(m, name + "_mask"), mask)


@pytest.mark.parametrize(
    "bad, error",
    [
        (lambda P, m: P.l1_unstructured(m, "weight", 100), ValueError),
        (lambda P, m: P.l1_unstructured(m, "weight", 1.5), ValueError),
        (lambda P, m: P.random_unstructured(m, "weight", "x"), TypeError),
        (lambda P, m: P.ln_structured(m, "bias", 1, 2, 0), ValueError),
        (lambda P, m: P.ln_structured(m, "weight", 1, 2, 4), IndexError),
        (lambda P, m: P.random_structured(m, "weight", 9, 0), ValueError),
        (lambda P, m: P.l1_unstructured(m, "weight", 1, importance_scores=torch.ones(3)), AssertionError),
        (lambda P, m: P.custom_from_mask(m, "weight", torch.ones(3)), AssertionError),
        (lambda P, m: P.l1_unstructured(m, "nope", 1), AttributeError),
    ],
)
def test_errors_match_torch_and_change_nothing(bad, error):
    ours, theirs = twins(lambda: nn.Conv2d(2, 3, 2))
    before = layout(ours)
    with pytest.raises(error):
        bad(T, theirs)
    with pytest.raises(error):
        bad(C, ours)
    assert layout(ours) == before


def test_remove_and_is_pruned():
    model = LeNet()
    for P in (C, T):
        with pytest.raises(ValueError, match="has to be pruned"):
            P.remove(model.conv1, "weight")
        assert not P.is_pruned(model)
    C.l1_unstructured(model.fc2, "bias", 3)
    assert C.is_pruned(model) and T.is_pruned(model) and not C.is_pruned(model.fc1)


def test_lstm_flat_weights_stay_consistent():
    ours, theirs = twins(lambda: nn.LSTM(8, 8))
    x = torch.randn(4, 2, 8)
    both = ((C, ours), (T, theirs))
    for P, m in both:
        P.l1_unstructured(m, "weight_ih_l0", 0.5)
        assert sum(isinstance(p, nn.Parameter) for p in m._flat_weights) == 3
        assert m._flat_weights[0] is m.weight_ih_l0
    assert_same(ours, theirs, x)
    for P, m in both:
        P.remove(m, "weight_ih_l0")
        assert sum(isinstance(p, nn.Parameter) for p in m._flat_weights) == 4
        assert m._parameters["weight_ih_l0"] is m._flat_weights[0] and "weight_ih_l0_orig" not in m._parameters
    assert_same(ours, theirs, x)


def _pruned_lenet(P=C, seed=0):
    torch.manual_seed(seed)
    model = LeNet()
    P.random_unstructured(model.conv1, "weight", 0.3)
    P.ln_structured(model.conv1, "weight", 0.5, 2, 0)
    P.global_unstructured([(model.fc1, "weight"), (model.fc2, "weight")], P.L1Unstructured, amount=0.6)
    P.l1_unstructured(model.fc3, "bias", 2)
    return model


@pytest.mark.parametrize("how", ["deepcopy", "copy", "pickle", "torch.save"])
def test_pruned_models_copy_pickle_and_save(how):
    model, reference = _pruned_lenet(C), _pruned_lenet(T)
    x = torch.randn(2, 1, 28, 28)
    if how == "deepcopy":
        new = copy.deepcopy(model)
        with pytest.raises(RuntimeError):
            copy.deepcopy(reference)  # what compat fixes
    elif how == "copy":
        new = copy.copy(model)
    elif how == "pickle":
        new = pickle.loads(pickle.dumps(model))
    else:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        new = torch.load(buffer, weights_only=False)
    assert_same(new, reference, x)
    assert isinstance(new.conv1, nn.Conv2d) and repr(new) == repr(model)
    if how != "copy":
        assert new.fc1.weight_orig is not model.fc1.weight_orig
        new.fc1.weight_orig.data.mul_(2)
        assert not torch.equal(new(x), model(x))  # independent copies
        C.remove(new.fc1, "weight")
        assert type(new.fc1) is nn.Linear and len(copy.deepcopy(new).fc2._forward_pre_hooks) == 1


def test_pruned_modules_keep_their_class_and_torchs_state_dict():
    # no class swap (torch.ao's make_config_from_model checks `type(m) is nn.Linear`)
    ours, theirs = twins(lambda: nn.Linear(3, 2))
    C.l1_unstructured(ours, "weight", 2)
    T.l1_unstructured(theirs, "weight", 2)
    assert type(ours) is nn.Linear and list(ours.state_dict()) == list(theirs.state_dict())
    for new in (copy.copy(ours), copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(new) is nn.Linear and torch.equal(new.weight, ours.weight) and new.weight.grad_fn is not None
    assert b"rebuild" in pickle.dumps(ours) and "__reduce_ex__" not in ours.state_dict()
    # a pickle of funcprune 1.0/1.1 names compat's module for the rebuild: it still loads
    old = pickle.dumps(ours, protocol=0).replace(
        b"cfuncprune._layout\nrebuild\n", b"cfuncprune.compat._module\n_rebuild\n"
    )
    assert b"compat._module" in old and torch.equal(pickle.loads(old).weight, ours.weight)
    C.remove(ours, "weight")
    assert "__reduce_ex__" not in ours.__dict__ and type(ours) is nn.Linear


def test_make_config_from_model_sees_a_compat_pruned_linear():
    from torch.ao.pruning import WeightNormSparsifier

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    C.l1_unstructured(model[0], "weight", 2)
    sparsifier = WeightNormSparsifier()
    sparsifier.make_config_from_model(model)
    assert [c["tensor_fqn"] for c in sparsifier.config] == ["0.weight", "2.weight"]


def test_pickles_of_the_class_swapping_version_still_load():
    m = C.l1_unstructured(nn.Linear(3, 2), "weight", 2)
    _, _, state = m.__reduce_ex__(2)
    from funcprune.compat import _module

    new = _module._new_pruned(nn.Linear)  # what a funcprune 0.1 pickle calls, then __setstate__
    new.__setstate__(state)
    assert type(new) is nn.Linear and torch.equal(new.weight, m.weight) and copy.deepcopy(new) is not None


def test_torch_functional_call_uses_swapped_orig_and_mask_also_under_vmap():
    m = C.l1_unstructured(nn.Linear(3, 2), "weight", 2)
    x = torch.randn(4, 3)
    masks = torch.stack([torch.zeros(2, 3), torch.ones(2, 3), m.weight_mask])
    out = torch.func.vmap(lambda mk: torch.func.functional_call(m, {"weight_mask": mk}, (x,)))(masks)
    assert torch.allclose(out[0], m.bias.expand(4, 2)) and torch.allclose(out[1], x @ m.weight_orig.T + m.bias)
    w = torch.randn(2, 3)
    out = torch.func.functional_call(m, {"weight_orig": w}, (x,))
    assert torch.allclose(out, x @ (w * m.weight_mask).T + m.bias)
    assert torch.allclose(m(x), x @ (m.weight_orig * m.weight_mask).T + m.bias)  # its own tensors again


def test_interop_with_torch_prune_in_both_directions():
    m = nn.Linear(6, 4)
    T.l1_unstructured(m, "weight", 5)
    C.random_unstructured(m, "weight", 3)  # compat on top of a torch hook makes a container
    hook = next(iter(m._forward_pre_hooks.values()))
    assert isinstance(hook, C.PruningContainer) and [type(h).__module__ for h in hook][0] == T.__name__
    assert int((m.weight_mask == 0).sum()) == 8
    T.ln_structured(m, "weight", 1, 2, 0)  # torch on top of a compat container
    assert len(hook) == 3 and int((m.weight_mask.sum(1) == 0).sum()) >= 1
    T.remove(m, "weight")  # torch's remove on a compat-pruned module gives the class back too
    assert type(m) is nn.Linear and [n for n, _ in m.named_parameters()] == ["bias", "weight"]


def test_second_pruning_moves_the_hook_to_the_end_like_torch():
    ours, theirs = twins(lambda: nn.Linear(5, 4))
    for P, m in ((C, ours), (T, theirs)):
        P.l1_unstructured(m, "weight", 2)
        P.l1_unstructured(m, "bias", 1)
        P.l1_unstructured(m, "weight", 2)
    assert_same(ours, theirs, torch.randn(2, 5))
    assert [h._tensor_name for h in ours._forward_pre_hooks.values()] == ["bias", "weight"]


def test_ported_pruning_rollback_on_mocked_exception():
    for m in (nn.Linear(5, 7), nn.Conv3d(2, 2, 2)):
        for name in ("weight", "bias"):
            with mock.patch("funcprune.compat.L1Unstructured.compute_mask", side_effect=Exception("HA!")):
                with pytest.raises(Exception, match="HA!"):
                    C.l1_unstructured(m, name=name, amount=0.9)
            assert name in dict(m.named_parameters()) and name + "_mask" not in dict(m.named_buffers())


def test_ported_identity_and_zero_percent_keep_forward_and_backward():
    x = torch.ones(1, 5)
    m = nn.Linear(5, 2)
    y = m(x)
    y.sum().backward()
    grad = m.weight.grad.clone()
    m.zero_grad()
    C.identity(m, "weight")
    C.random_unstructured(m, "bias", 0.0)
    y2 = m(x)
    y2.sum().backward()
    assert torch.equal(y, y2) and torch.equal(grad, m.weight_orig.grad) and torch.equal(m(x), m(x))


def test_ported_custom_from_mask_and_l1_worked_examples():
    mask, default = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]]), torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]])
    got = C.CustomFromMask(mask=mask).compute_mask(torch.rand(2, 4), default)
    assert torch.equal(got, torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]]))
    m = nn.Linear(4, 2)
    m.weight = nn.Parameter(torch.tensor([[1, 2, 3, 4], [-4, -3, -2, -1]], dtype=torch.float32))
    C.l1_unstructured(m, "weight", amount=2)
    assert torch.equal(m.weight, torch.tensor([[0.0, 2, 3, 4], [-4, -3, -2, 0]]))
    C.l1_unstructured(m, "weight", amount=2)
    assert torch.equal(m.weight, torch.tensor([[0.0, 0, 3, 4], [-4, -3, 0, 0]]))


def test_pruning_container_api():
    container = C.PruningContainer()
    container._tensor_name = "test"
    p = C.L1Unstructured(amount=2)
    p._tensor_name = "test"
    container.add_pruning_method(p)
    q = C.L1Unstructured(amount=2)
    q._tensor_name = "another_test"
    with pytest.raises(ValueError):
        container.add_pruning_method(q)
    for bad in (10, "ugh"):
        with pytest.raises(TypeError):
            container.add_pruning_method(bad)
    assert len(container) == 1 and container[0] is p and list(container) == [p]


def test_a_failed_prune_in_one_thread_keeps_another_threads_prune_of_the_same_module():
    # The failing call blocks (after its module changes began) until the other thread's
    # prune of another tensor is done, then fails: its rollback must undo only its own changes.
    import threading

    m = nn.Linear(6, 4)
    started, other_done = threading.Event(), threading.Event()

    class FailsLate(C.BasePruningMethod):
        PRUNING_TYPE = "unstructured"

        def compute_mask(self, t, default_mask):
            started.set()
            assert other_done.wait(timeout=30)
            raise RuntimeError("late failure")

    errors = []

    def failing():
        try:
            FailsLate.apply(m, "bias")
        except RuntimeError as err:
            errors.append(err)

    def other():
        assert started.wait(timeout=30)
        C.l1_unstructured(m, "weight", 3)
        other_done.set()

    threads = [threading.Thread(target=failing), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(errors) == 1 and not any(t.is_alive() for t in threads)
    assert [n for n, _ in m.named_parameters()] == ["bias", "weight_orig"]
    assert list(m.state_dict()) == ["bias", "weight_orig", "weight_mask"] and int((m.weight_mask == 0).sum()) == 3
    assert [h._tensor_name for h in m._forward_pre_hooks.values()] == ["weight"] and "weight" in m.__dict__
    assert copy.deepcopy(m) is not None


@pytest.mark.parametrize("first", [None, "bias", "weight"])
def test_a_failed_prune_after_the_module_changed_leaves_it_exactly_as_before(first):
    m = nn.Linear(5, 3)
    if first is not None:
        C.l1_unstructured(m, first, 1)
    C.random_unstructured(m, "bias" if first == "weight" else "weight", 1)  # another pruned tensor
    before, state = layout(m), {k: v.clone() for k, v in m.state_dict().items()}
    hooks = list(m._forward_pre_hooks.items())
    histories = [list(h) if isinstance(h, T.PruningContainer) else None for _, h in hooks]
    with mock.patch.object(C.BasePruningMethod, "apply_mask", side_effect=RuntimeError("late")):
        with pytest.raises(RuntimeError, match="late"):
            C.l1_unstructured(m, first or "bias", 1)  # fails after _orig/_mask were registered
    assert layout(m) == before and list(m._forward_pre_hooks.items()) == hooks
    assert [list(h) if isinstance(h, T.PruningContainer) else None for _, h in hooks] == histories
    assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())
    assert (first is None) == ("bias" not in m.__dict__) and type(m) is nn.Linear


class Cached(nn.Linear):
    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("cache", None)  # never copied nor pickled
        return state


def test_copies_of_a_pruned_module_go_through_its_own_getstate():
    m = Cached(3, 2)
    m.cache = torch.zeros(1000)
    C.l1_unstructured(m, "weight", 2)
    for twin in (copy.copy(m), copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert not hasattr(twin, "cache") and type(twin) is Cached
        assert torch.equal(twin.weight_mask, m.weight_mask) and torch.equal(twin.weight, m.weight)


def _crowded_linear(seed: int) -> nn.Linear:
    """A Linear with many plain hooks and attributes: long dict iterations, so a thread switch lands in one."""
    torch.manual_seed(seed)
    m = nn.Linear(8, 8)
    for j in range(200):
        m.register_forward_pre_hook(lambda mod, args: None)
        setattr(m, f"note{j}", j)
    return m


@pytest.mark.parametrize("other", ["prune", "remove"])
def test_concurrent_calls_on_different_tensors_of_one_module_both_land(other):
    """Rule: two threads pruning (or un-pruning) different tensors of one module never fail, and both
    changes land with torch's masks, run after run (thread switches forced every microsecond)."""
    import sys
    import threading

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for seed in range(60):
            m = _crowded_linear(seed)
            if other == "remove":
                C.l1_unstructured(m, "bias", 2)
            original = copy.deepcopy(m)
            barrier, errors = threading.Barrier(2), []

            def run(call):
                barrier.wait()
                try:
                    call()
                except Exception as err:  # noqa: BLE001 (reported below)
                    errors.append(err)

            second = (lambda: C.remove(m, "bias")) if other == "remove" else (lambda: C.l1_unstructured(m, "bias", 3))
            threads = [
                threading.Thread(target=run, args=(lambda: C.l1_unstructured(m, "weight", 20),)),
                threading.Thread(target=run, args=(second,)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not errors and not any(t.is_alive() for t in threads), (seed, errors)
            orders = []  # the calls may land in either order: torch's layout for each order
            for first_weight in (True, False):
                twin = copy.deepcopy(original)
                steps = [
                    lambda: T.l1_unstructured(twin, "weight", 20),
                    (lambda: T.remove(twin, "bias"))
                    if other == "remove"
                    else (lambda: T.l1_unstructured(twin, "bias", 3)),
                ]
                for step in steps if first_weight else steps[::-1]:
                    step()
                orders.append(twin)
            assert layout(m) in [layout(twin) for twin in orders], seed
            for key, value in orders[0].state_dict().items():
                assert torch.equal(m.state_dict()[key], value), (seed, key)
    finally:
        sys.setswitchinterval(interval)
