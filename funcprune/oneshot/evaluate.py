"""Perplexity of a (pruned) causal language model on a token stream, as the one-shot papers measure it.

The token stream is cut into consecutive windows of ``seq_len`` tokens (the remainder dropped);
each window is one sequence, every token after its first is predicted from the ones before it,
and the perplexity is ``exp`` of the mean negative log-likelihood over all predicted tokens. With
windows of one length this is the Wanda and SparseGPT evaluation (``exp`` of the mean of the
windows' mean losses).
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F

from ..call import functional_call

__all__ = ["perplexity"]


def perplexity(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    *,
    seq_len: int,
    params: dict[str, torch.Tensor] | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    batch_size: int = 4,
    device: str | torch.device | None = None,
) -> float:
    """Perplexity of ``model`` (on ``params`` masked by ``masks`` when given) over ``tokens``.

    The model runs in eval mode under ``torch.no_grad`` (its ``training`` flag is restored
    afterwards) and is otherwise not modified: with ``params`` or ``masks`` it runs through
    :func:`funcprune.functional_call`, so ``perplexity(model, tokens, seq_len=512,
    params=result.params, masks=result.masks)`` evaluates a :func:`funcprune.oneshot.prune` result
    without writing it into the model. The forward is ``model(input_ids)`` with ``input_ids`` of
    shape ``(batch, seq_len)``; its output is the logits ``(batch, seq_len, vocab)`` or an object
    with a ``.logits`` attribute (Hugging Face models) or a tuple whose first entry is the logits.
    The loss is computed in float32 (float64 for float64 logits) whatever the model's dtype.

    Memory: one batch's logits (``batch_size * seq_len * vocab`` floats) live at a time.

    Args:
      model: a causal language model.
      tokens: the token ids, an integer tensor of shape ``(n,)`` or ``(1, n)``.
      seq_len: tokens per window (at least 2); ``n // seq_len`` windows are evaluated.
      params: tensors named like ``model.named_parameters()`` (buffers allowed) used in place of
        the model's own; names not given keep the model's.
      masks: bool masks over some of those names (``result.masks`` of a one-shot run).
      batch_size: windows per forward.
      device: where the forward runs; tokens, ``params``, ``masks`` and the model's own tensors
        not given in ``params`` are moved there for the call (copies; the model itself stays
        where it is). Default: the device of the model's first parameter (or of ``tokens``).

    Returns:
      The perplexity, a Python float.

    Raises:
      TypeError: ``tokens`` is not an integer tensor.
      ValueError: ``tokens`` has another shape than ``(n,)`` or ``(1, n)``, fewer than ``seq_len``
        tokens, ``seq_len < 2`` or ``batch_size < 1``.

    Example:
      >>> vocab = 11
      >>> model = torch.nn.Sequential(torch.nn.Embedding(vocab, 8), torch.nn.Linear(8, vocab))
      >>> with torch.no_grad():
      ...     _ = model[1].weight.zero_(), model[1].bias.zero_()   # uniform predictions
      >>> round(perplexity(model, torch.arange(40) % vocab, seq_len=10), 4)
      11.0
    """
    tokens = _check(tokens, seq_len, batch_size)
    windows = tokens.numel() // seq_len
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else tokens.device
    device = torch.device(device)
    tokens = tokens[: windows * seq_len].reshape(windows, seq_len).to(device)
    values = _values_on(model, params, masks, device)
    masks = None if masks is None else {name: m.to(device) for name, m in masks.items()}
    was_training = model.training
    model.eval()
    total, count = None, 0
    try:
        with torch.no_grad():
            for start in range(0, windows, batch_size):
                batch = tokens[start : start + batch_size]
                if values is None:
                    out = model(batch)
                else:
                    out = functional_call(model, values, (batch,), masks=masks)
                logits = _logits(out)
                loss_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
                nll = F.cross_entropy(
                    logits[:, :-1].flatten(0, 1).to(loss_dtype), batch[:, 1:].flatten(), reduction="sum"
                )
                total = nll if total is None else total + nll
                count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return math.exp(float(cast(torch.Tensor, total)) / count)  # _check leaves one window or more


def _check(tokens: Any, seq_len: int, batch_size: int) -> torch.Tensor:
    if (
        not isinstance(tokens, torch.Tensor)
        or tokens.is_floating_point()
        or tokens.is_complex()
        or tokens.dtype == torch.bool
    ):
        raise TypeError(
            f"tokens must be an integer tensor of token ids, got {type(tokens).__name__}"
            + (f" of dtype {tokens.dtype}" if isinstance(tokens, torch.Tensor) else "")
        )
    if tokens.dim() == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.dim() != 1:
        raise ValueError(f"tokens must have shape (n,) or (1, n), got {tuple(tokens.shape)}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2 (one token predicted from another), got {seq_len!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if tokens.numel() < seq_len:
        raise ValueError(f"tokens holds {tokens.numel()} tokens, fewer than one window of seq_len={seq_len}")
    return tokens


def _values_on(
    model: torch.nn.Module,
    params: dict[str, torch.Tensor] | None,
    masks: dict[str, torch.Tensor] | None,
    device: torch.device,
) -> dict[str, torch.Tensor] | None:
    """The tensors to call the model on, on ``device``; None when the model's own (already there) will do."""
    own: dict[str, torch.Tensor] = dict(model.named_parameters())
    own.update(model.named_buffers())
    on_device = all(t.device == device for t in own.values())
    if params is None and masks is None and on_device:
        return None
    values = {} if on_device else {name: t.detach().to(device) for name, t in own.items()}
    values.update({name: t.to(device) for name, t in (params or {}).items()})
    return values


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        f"the model's output must be logits, an object with .logits or a tuple of them, got {type(out).__name__}"
    )
