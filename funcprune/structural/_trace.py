"""Trace a module into its pre-dispatch ATen graph and follow its channel spaces through the graph.

Eager-only code: it reads shapes from the traced graph's fake tensors and never touches a
parameter's values. The data model is in ``_flow``, the op rules in ``_rules``/``_shapes``;
``_groups`` turns the joined spaces into :class:`~funcprune.structural.Group`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.fx.traceback as fx_traceback
from torch.fx.experimental.proxy_tensor import make_fx

from ._flow import Flow, Seg, TensorState, iter_dims, module_path, untracked
from ._rules import RULES, op_key


def capture(module: torch.nn.Module, args, kwargs=None, training: bool = False):
    """Trace the module in eval (or train) mode without grad into its pre-dispatch ATen graph; its
    train/eval flags are restored.

    The graph is the one ``torch.export.export(module, args, kwargs, strict=False)`` builds (its tracer,
    ``make_fx`` with ``pre_dispatch=True`` on fake tensors), without export's signature, verifier and
    program construction, which cost twice the trace itself: the parameters and buffers are explicit
    inputs (``torch.func.functional_call``), so each placeholder's name is known by its position.

    Returns:
        ``(graph_module, {placeholder name: (canonical name, is_buffer)})``: canonical names
        are the first name of each tensor in ``named_parameters()`` / ``named_buffers()`` (a tied
        weight, one tensor under two names, is one input under the name ``named_parameters()`` reports).
    """
    tensors: dict[str, torch.Tensor] = {}
    owners: list[tuple[str, bool]] = []
    seen: set[int] = set()
    for what, is_buffer in ((module.named_parameters(), False), (module.named_buffers(), True)):
        for name, t in what:
            if id(t) not in seen:
                seen.add(id(t))
                tensors[name] = t
                owners.append((name, is_buffer))
    flat, _ = torch.utils._pytree.tree_flatten((tensors, tuple(args), dict(kwargs or {})))

    def call(tensors, args, kwargs):
        return torch.func.functional_call(module, tensors, args, kwargs)

    modes = {m: m.training for m in module.modules()}
    try:
        module.train(training)
        with torch.no_grad(), _module_stack(module):
            try:
                # tensors the forward holds outside parameters and buffers (a plain tensor attribute) are
                # constants of the graph, as torch.export lifts them: make_fx's flag for that is underscored
                trace = make_fx(call, pre_dispatch=True, tracing_mode="fake", _allow_non_fake_inputs=True)
                gm = trace(tensors, tuple(args), dict(kwargs or {}))
            except Exception as err:  # data-dependent control flow, unsupported Python...
                raise NotImplementedError(
                    f"funcprune.structural.groups: could not trace the model "
                    f"{type(module).__module__}.{type(module).__qualname__} (its groups are read from its "
                    f"fake-tensor ATen graph, as torch.export(strict=False) traces it): "
                    f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                ) from err
    finally:
        for m, mode in modes.items():
            m.training = mode
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(flat):  # make_fx makes one placeholder per flattened input, in order
        raise AssertionError(f"funcprune.structural.groups: {len(placeholders)} graph inputs for {len(flat)} inputs")
    return gm, dict(zip(placeholders, owners))


@contextlib.contextmanager
def _module_stack(module: torch.nn.Module) -> Iterator[None]:
    """Record, in each traced node's ``meta["nn_module_stack"]``, the submodules it ran in (for reasons and errors).

    make_fx's own recorder (``record_module_stack``) proxies every submodule attribute access, which
    doubles the trace of a transformer; forward hooks keep the stack instead, and fx copies the
    current meta into every node it creates while ``preserve_node_meta`` is on.
    """
    paths = {m: name for name, m in module.named_modules()}
    stack: list[tuple[str, type]] = []
    meta = fx_traceback.get_current_meta

    def push(mod, inputs):
        if mod in paths:
            stack.append((paths[mod], type(mod)))
            meta()["nn_module_stack"] = {path: (path, cls) for path, cls in stack}

    def pop(mod, inputs, output):
        if mod in paths and stack:
            stack.pop()
            meta()["nn_module_stack"] = {path: (path, cls) for path, cls in stack}

    with fx_traceback.preserve_node_meta():
        pre = torch.nn.modules.module.register_module_forward_pre_hook(push)
        post = torch.nn.modules.module.register_module_forward_hook(pop)
        try:
            yield
        finally:
            pre.remove()
            post.remove()


def run(module: torch.nn.Module, args, kwargs=None) -> Flow:
    """Trace ``module`` and run the channel-space dataflow over its graph.

    The eval-mode graph is followed; where it leaves parameters unused (a branch only train mode runs,
    Inception-v3's auxiliary head), the train-mode graph is followed too, into the same spaces, so
    that a shrink also slices what only training reads.
    """
    flow = Flow()
    params: dict[str, tuple[tuple[Seg, ...], ...]] = {}  # canonical name -> per-dim segments, shared by both graphs
    gm, names = capture(module, args, kwargs)
    _follow(flow, module, gm, names, params)
    used = {names[n.name][0] for n in gm.graph.nodes if n.op == "placeholder" and n.name in names and n.users}
    unused = [name for name, is_buffer in dict.fromkeys(names.values()) if not is_buffer and name not in used]
    if unused:
        try:
            gm, names = capture(module, args, kwargs, training=True)
        except NotImplementedError as err:
            raise NotImplementedError(
                f"funcprune.structural.groups: parameters {unused[:4]}{' ...' if len(unused) > 4 else ''} are unused "
                "by the eval-mode forward (a branch only train mode runs?) and tracing train mode, to follow their "
                f"channels, failed: {err}"
            ) from err
        _follow(flow, module, gm, names, params)
    for parts, reason in flow.equal_splits:  # a split into equal parts needs its parts pruned alike
        roots = {id(flow.find(s.space)): s.space for segs in parts for s in flow.resolve(segs) if not s.inner}
        if len(roots) > 1:
            for space in roots.values():
                flow.pin(space, reason)
    return flow


def _follow(flow: Flow, module: torch.nn.Module, gm: torch.fx.GraphModule, names, params) -> None:
    """Run the op rules over one traced graph."""
    env: dict[str, Any] = {}  # map_arg's callback must return an fx Argument; the states are not
    for node in gm.graph.nodes:
        val = node.meta.get("val")
        if node.op == "placeholder":
            shape = tuple(val.shape) if isinstance(val, torch.Tensor) else ()
            if node.name in names:
                name, buf = names[node.name]
                if name not in params:
                    params[name] = tuple(
                        (Seg(flow.new(n, (name, d, buf)), 0, n),) if n > 1 else () for d, n in enumerate(shape)
                    )
                env[node.name] = TensorState(shape, params[name])
            elif isinstance(val, torch.Tensor):
                env[node.name] = untracked(shape)  # a model input: carries no channel space
            else:
                env[node.name] = None
        elif node.op == "call_function":
            args_ = torch.fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs_ = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            rule = RULES.get(op_key(node.target))
            if rule is None:
                if not any(iter_dims((args_, list(kwargs_.values())))):
                    env[node.name] = _untracked_like(val)  # no channel flows in: nothing to follow
                    continue
                raise NotImplementedError(
                    f"funcprune.structural.groups: no channel rule for {node.target} "
                    f"(node {node.name}) in submodule {module_path(node)}; its inputs carry channels"
                )
            try:
                out = rule(flow, node, args_, kwargs_)
                if isinstance(val, torch.Tensor) and (not isinstance(out, TensorState) or len(out.dims) != val.dim()):
                    raise ValueError(f"it gave a value of the wrong rank for an output of shape {tuple(val.shape)}")
            except NotImplementedError:
                raise
            except Exception as err:  # a call the rule was not written for: name it, never an internal error
                raise NotImplementedError(
                    f"funcprune.structural.groups: the channel rule for {node.target} (node {node.name}) in submodule "
                    f"{module_path(node)} does not handle this call: {type(err).__name__}: {err}"
                ) from err
            env[node.name] = out
        elif node.op == "get_attr":  # a tensor constant of the forward (not a parameter or buffer): no channels
            env[node.name] = _untracked_like(getattr(gm, node.target, None))
        elif node.op == "output":  # the model's outputs (buffer updates happen in place, not as outputs)
            outs = torch.fx.node.map_arg(node.args[0], lambda n: env[n.name])
            flow.pin_all(outs, "reaches the model output")
        else:
            raise NotImplementedError(f"funcprune.structural.groups: graph node kind {node.op!r}")


def _untracked_like(val):
    if isinstance(val, torch.Tensor):
        return untracked(val.shape)
    if isinstance(val, (list, tuple)):
        return [_untracked_like(v) for v in val]
    return None
