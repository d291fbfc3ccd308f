"""Capture a module with ``torch.export`` and follow its channel spaces through the graph.

Eager-only code: it reads shapes from the exported graph's fake tensors and never touches a
parameter's values. The data model is in ``_flow``, the op rules in ``_rules``/``_shapes``;
``_groups`` turns the joined spaces into :class:`~funcprune.structural.Group`.
"""

from __future__ import annotations

from typing import Any

import torch

from ._flow import Flow, Seg, TensorState, iter_dims, module_path, untracked
from ._rules import RULES, op_key


def capture(module: torch.nn.Module, args, kwargs=None, training: bool = False):
    """``torch.export`` the module in eval (or train) mode without grad; its train/eval flags are restored.

    Returns:
        ``(exported_program, {placeholder name: (canonical name, is_buffer)})``: canonical names
        are the first name of each tensor in ``named_parameters()`` / ``named_buffers()`` (a tied
        weight, one tensor under two names, maps to the name ``named_parameters()`` reports).
    """
    modes = {m: m.training for m in module.modules()}
    canonical: dict[int, tuple[str, bool]] = {}
    for name, p in module.named_parameters():
        canonical.setdefault(id(p), (name, False))
    for name, b in module.named_buffers():
        canonical.setdefault(id(b), (name, True))
    try:
        module.train(training)
        with torch.no_grad():
            try:
                ep = torch.export.export(module, args, kwargs or {}, strict=False)
            except Exception as err:  # data-dependent control flow, unsupported Python...
                raise NotImplementedError(
                    f"funcprune.structural.groups: torch.export could not capture the model "
                    f"{type(module).__module__}.{type(module).__qualname__} (its groups are traced from the "
                    f"exported graph): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                ) from err
    finally:
        for m, mode in modes.items():
            m.training = mode
    sig = ep.graph_signature
    names = {}
    for ph, fqn in list(sig.inputs_to_parameters.items()) + list(sig.inputs_to_buffers.items()):
        try:
            tensor: torch.Tensor = module.get_parameter(fqn)
        except AttributeError:
            tensor = module.get_buffer(fqn)
        names[ph] = canonical.get(id(tensor), (fqn, fqn in sig.inputs_to_buffers.values()))
    return ep, names


def run(module: torch.nn.Module, args, kwargs=None) -> Flow:
    """Export ``module`` and run the channel-space dataflow over its graph.

    The eval-mode graph is followed; where it leaves parameters unused (a branch only train mode runs,
    Inception-v3's auxiliary head), the train-mode graph is followed too, into the same spaces, so
    that a shrink also slices what only training reads.
    """
    flow = Flow()
    params: dict[str, tuple[tuple[Seg, ...], ...]] = {}  # canonical name -> per-dim segments, shared by both graphs
    ep, names = capture(module, args, kwargs)
    _follow(flow, module, ep, names, params)
    used = {names[n.name][0] for n in ep.graph.nodes if n.op == "placeholder" and n.name in names and n.users}
    unused = [name for name, is_buffer in dict.fromkeys(names.values()) if not is_buffer and name not in used]
    if unused:
        try:
            ep, names = capture(module, args, kwargs, training=True)
        except NotImplementedError as err:
            raise NotImplementedError(
                f"funcprune.structural.groups: parameters {unused[:4]}{' ...' if len(unused) > 4 else ''} are unused "
                "by the eval-mode forward (a branch only train mode runs?) and tracing train mode, to follow their "
                f"channels, failed: {err}"
            ) from err
        _follow(flow, module, ep, names, params)
    for parts, reason in flow.equal_splits:  # a split into equal parts needs its parts pruned alike
        roots = {id(flow.find(s.space)): s.space for segs in parts for s in flow.resolve(segs) if not s.inner}
        if len(roots) > 1:
            for space in roots.values():
                flow.pin(space, reason)
    return flow


def _follow(flow: Flow, module: torch.nn.Module, ep, names, params) -> None:
    """Run the op rules over one exported graph."""
    env: dict[str, Any] = {}  # map_arg's callback must return an fx Argument; the states are not
    user_outputs = [
        i
        for i, spec in enumerate(ep.graph_signature.output_specs)
        if spec.kind == torch.export.graph_signature.OutputKind.USER_OUTPUT
    ]
    for node in ep.graph.nodes:
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
        elif node.op == "output":  # the user's outputs (not the buffers a train-mode forward updates)
            outs = torch.fx.node.map_arg(node.args[0], lambda n: env[n.name])
            flow.pin_all([outs[i] for i in user_outputs], "reaches the model output")
        else:
            raise NotImplementedError(f"funcprune.structural.groups: graph node kind {node.op!r}")


def _untracked_like(val):
    if isinstance(val, torch.Tensor):
        return untracked(val.shape)
    if isinstance(val, (list, tuple)):
        return [_untracked_like(v) for v in val]
    return None
