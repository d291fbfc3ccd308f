"""Export: finalize vs torch's remove, sparse conversion that computes the same outputs, mask checkpoints."""

import copy
import io
import json
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune
from hypothesis import given, settings
from hypothesis import strategies as st

import funcprune as fp
from funcprune.export import (
    SemiStructuredUnavailable,
    check_semi_structured,
    finalize,
    load_masks,
    save_masks,
    semi_structured_available,
    semi_structured_pattern,
    size_report,
    to_semi_structured,
    to_sparse,
    verify,
)
from funcprune.patterns import nm_structured


def mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    params = {k: v.detach() for k, v in model.named_parameters()}
    masks = fp.prune(params, fp.l1_unstructured, 0.7, include=lambda n, p: n.endswith("weight"))
    masks = fp.prune(params, fp.l1_unstructured, 3, masks=masks, include=["0.bias"])
    return model, params, masks


def test_finalize_equals_torch_remove():
    model, params, masks = mlp()
    ref = copy.deepcopy(model)
    for name, mask in masks.items():
        module_name, _, tensor = name.rpartition(".")
        torch_prune.custom_from_mask(ref.get_submodule(module_name), tensor, mask)
        torch_prune.remove(ref.get_submodule(module_name), tensor)
    out = finalize(params, masks)
    for name, p in ref.named_parameters():
        assert torch.equal(out.params[name], p.detach())
    snapshot = copy.deepcopy(params)
    out.params["0.weight"].add_(1)  # a copy, not a view of the input
    assert torch.equal(params["0.weight"], snapshot["0.weight"])


def test_size_report_numbers():
    _, params, masks = mlp()
    report = finalize(params, masks).report
    assert report.dense_bytes == 4 * sum(p.numel() for p in params.values())
    assert report.total == sum(p.numel() for p in params.values())
    assert report.nnz == sum(int(m.sum()) for m in masks.values()) + params["2.bias"].numel()
    leaf = report.per_leaf["0.weight"]
    nnz = int(masks["0.weight"].sum())
    assert (leaf.nnz, leaf.dense, leaf.coo, leaf.csr, leaf.bitmask) == (
        nnz,
        16 * 12 * 4,
        nnz * (2 * 8 + 4),
        17 * 8 + nnz * 12,
        24 + nnz * 4,
    )
    assert report.sparse_bytes < report.dense_bytes
    assert size_report(params).sparse_bytes == size_report(params).dense_bytes


@pytest.mark.parametrize("layout", ["csr", "coo"])
def test_to_sparse_matches_masked_dense_model(layout, device):
    model, params, masks = mlp()
    model, params = model.to(device), {k: v.to(device) for k, v in params.items()}
    masks = {k: v.to(device) for k, v in masks.items()}
    out = to_sparse(params, masks, layout)
    expected_layout = torch.sparse_csr if layout == "csr" else torch.sparse_coo
    assert out.params["0.weight"].layout == expected_layout and out.params["2.bias"].layout == torch.strided
    assert out.skipped == ({"0.bias": "CSR needs a 2-D tensor, got shape (16,)"} if layout == "csr" else {})
    for name, mask in masks.items():
        value = out.params[name]
        dense = value.to_dense() if value.layout != torch.strided else value
        assert torch.equal(dense, params[name] * mask)
    x = torch.randn(9, 12, device=device)
    check = verify(params, masks, out.params, model if layout == "csr" else None, (x,))
    assert check.ok and check.mismatched == ()
    if layout == "csr":
        assert check.max_abs_diff < 1e-5


def test_to_sparse_stores_the_mask_structure_not_the_nonzeros():
    params = {"w": torch.tensor([[0.0, 1.0], [2.0, 0.0]])}
    masks = {"w": torch.tensor([[True, True], [False, False]])}
    coo = to_sparse(params, masks, "coo").params["w"]
    assert coo._nnz() == 2 and coo.indices().tolist() == [[0, 0], [0, 1]]


def test_verify_detects_a_wrong_export():
    model, params, masks = mlp()
    exported = dict(to_sparse(params, masks, "csr").params)
    exported["2.weight"] = params["2.weight"]  # unmasked: wrong
    check = verify(params, masks, exported, model, (torch.randn(3, 12),))
    assert not check.ok and check.mismatched == ("2.weight",) and check.max_abs_diff > 0


def test_to_sparse_errors():
    _, params, masks = mlp()
    with pytest.raises(ValueError, match="layout"):
        to_sparse(params, masks, "bsr")
    with pytest.raises(KeyError):
        to_sparse(params, {"nope": torch.ones(1)})


def two_four(rows, cols, dtype, device="cpu"):
    torch.manual_seed(rows + cols)
    w = torch.randn(rows, cols, device=device).to(dtype)
    n, m = semi_structured_pattern(dtype)
    return w, nm_structured(w, n, m)


def test_semi_structured_layout_check_on_any_device():
    w, mask = two_four(32, 64, torch.float16)
    assert check_semi_structured(w, mask) == [] and check_semi_structured(w * mask) == []
    assert any("2:4" in p for p in check_semi_structured(w))  # dense rows break the pattern
    assert any("not a multiple" in p for p in check_semi_structured(*two_four(24, 64, torch.float16)))
    assert "2-D" in check_semi_structured(torch.zeros(4, 4, 4, dtype=torch.float16))[0]
    assert any("dtype" in p for p in check_semi_structured(torch.zeros(32, 64, dtype=torch.float64)))
    assert any("not contiguous" in p for p in check_semi_structured((w * mask).t().contiguous().t()))
    f32, f32_mask = two_four(32, 64, torch.float32)
    assert semi_structured_pattern(torch.float32) == (1, 2)
    # A 2:4 float32 mask is not enough: TF32 kernels need 1:2.
    assert any("1:2" in p for p in check_semi_structured(f32, nm_structured(f32, 2, 4)))


def test_semi_structured_conversion_skips_cleanly_where_unsupported(device):
    w, mask = two_four(32, 64, torch.float16, device)
    ok, reason = semi_structured_available(w.device)
    if not ok:
        assert "CUDA" in reason or "capability" in reason
        with pytest.raises(SemiStructuredUnavailable, match="CUDA|capability"):
            to_semi_structured(w, mask)
        out = to_sparse({"w": w}, {"w": mask}, "semi_structured")
        assert out.skipped == {"w": reason} and torch.equal(out.params["w"], w * mask)
        return
    out = to_sparse({"w": w}, {"w": mask}, "semi_structured")  # CUDA sm80+: the real kernels
    assert out.skipped == {}
    lin = nn.Linear(64, 32).to(device=device, dtype=torch.float16)
    params = {"weight": w, "bias": lin.bias.detach()}
    check = verify(
        params,
        {"weight": mask},
        {**params, **out.params},
        lin,
        (torch.randn(64, 64, device=device, dtype=torch.float16),),
        rtol=1e-2,
        atol=1e-2,
    )
    assert check.ok


def test_semi_structured_layout_errors_are_reported():
    if semi_structured_available(torch.device("cuda"))[0]:
        with pytest.raises(SemiStructuredUnavailable, match="2:4"):
            to_semi_structured(torch.randn(32, 64, device="cuda", dtype=torch.float16))
    else:
        with pytest.raises(SemiStructuredUnavailable, match="CUDA"):
            to_semi_structured(torch.randn(32, 64, dtype=torch.float16))


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple), seed=st.integers(0, 2**16))
def test_mask_checkpoint_round_trips_and_is_numpy_packbits(shape, seed):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) > 0.5
    buffer = io.BytesIO()
    save_masks({"m.weight": mask, "n": {"bias": ~mask}}, buffer)
    buffer.seek(0)
    raw = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    assert raw["format"] == "funcprune.masks" and raw["version"] == 2
    header = b'["m.weight",' + str(list(mask.shape)).replace(" ", "").encode() + b"]"
    assert raw["masks"]["m.weight"]["crc32"] == zlib.crc32(
        raw["masks"]["m.weight"]["bits"].numpy().tobytes(), zlib.crc32(header)
    )
    assert np.array_equal(raw["masks"]["m.weight"]["bits"].numpy(), np.packbits(mask.numpy().ravel()))
    loaded = load_masks(buffer)
    assert set(loaded) == {"m.weight", "n.bias"}
    assert loaded["m.weight"].dtype == torch.bool and torch.equal(loaded["m.weight"], mask)
    assert torch.equal(loaded["n.bias"], ~mask)


@pytest.mark.parametrize("shape", [(), (0,), (13,), (3, 5), (2, 3, 9)])
def test_mask_files_written_from_the_format_spec_load(shape):
    """Files of format version 2 as documented (numpy.packbits of the flattened mask, zlib CRCs), written
    here without funcprune's packer, load bit-exact: the shared packer kept the file format."""
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape))) > 0.5
    bits = torch.from_numpy(np.packbits(mask.numpy().ravel()))
    crc = zlib.crc32(bits.numpy().tobytes(), zlib.crc32(json.dumps(["w", list(shape)], separators=(",", ":")).encode()))
    total = zlib.crc32(json.dumps([["w", crc]], separators=(",", ":")).encode())
    buffer = io.BytesIO()
    torch.save(
        {
            "format": "funcprune.masks",
            "version": 2,
            "crc32": total,
            "masks": {"w": {"shape": list(shape), "bits": bits, "crc32": crc}},
        },
        buffer,
    )
    buffer.seek(0)
    loaded = load_masks(buffer)["w"]
    assert loaded.dtype == torch.bool and loaded.shape == mask.shape and torch.equal(loaded, mask)


def test_mask_checkpoint_file_like_and_errors(tmp_path):
    params = {"fc": {"weight": torch.randn(300, 400), "bias": torch.randn(300)}}
    masks = {"fc": {"weight": (torch.rand(300, 400) > 0.5).float()}}  # compat-style float mask
    path = tmp_path / "masks.pt"
    save_masks(masks, path)
    loaded = load_masks(path, like=params)
    assert list(loaded) == ["fc"] and list(loaded["fc"]) == ["weight"]
    assert torch.equal(loaded["fc"]["weight"], masks["fc"]["weight"].bool())
    assert path.stat().st_size < 300 * 400 // 8 + 4096  # one bit per entry plus torch.save's zip framing
    with pytest.raises(ValueError, match="shape"):
        load_masks(path, like={"fc": {"weight": torch.randn(400, 300)}})
    with pytest.raises(KeyError):
        load_masks(path, like={"other": torch.randn(300, 400)})
    with pytest.raises(ValueError, match="0 or 1"):
        save_masks({"w": torch.tensor([0.5, 1.0])}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="meta"):
        save_masks({"w": torch.ones(3, device="meta", dtype=torch.bool)}, tmp_path / "bad.pt")
    torch.save({"weight": torch.ones(2)}, tmp_path / "not_masks.pt")
    with pytest.raises(ValueError, match="not a funcprune mask checkpoint"):
        load_masks(tmp_path / "not_masks.pt")
    torch.save({"format": "funcprune.masks", "version": 99, "masks": {}}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="version"):
        load_masks(tmp_path / "future.pt")


# --- pruned NaN/inf are zero in every exported or finalized form ------------------------------------------

NAN, INF = float("nan"), float("inf")


def nonfinite_linear():
    """An nn.Linear whose weight holds NaN/inf at pruned positions and NaN/inf/-inf kept too."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    w = lin.weight.detach().clone()
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.5
    mask[0, :3] = torch.tensor([False, False, False])
    w[0, :3] = torch.tensor([NAN, INF, -INF])  # pruned
    return lin, {"weight": w, "bias": lin.bias.detach()}, {"weight": mask}


def nan_equal(a, b):
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("kept_nonfinite", [False, True])
def test_pruned_nan_inf_are_exactly_zero_in_every_form(kept_nonfinite):
    lin, params, masks = nonfinite_linear()
    w, mask = params["weight"], masks["weight"]
    if kept_nonfinite:
        mask[1, :3] = True
        w[1, :3] = torch.tensor([NAN, INF, -INF])
    reference = torch.where(mask, w, 0.0)
    assert not reference[~mask].any() and reference[0, :3].eq(0).all()
    out = finalize(params, masks).params["weight"]
    assert nan_equal(out, reference)
    for layout in ("coo", "csr"):
        sparse = to_sparse(params, masks, layout).params["weight"]
        assert nan_equal(sparse.to_dense(), reference)
    skipped = to_sparse({"v": w[0]}, {"v": mask[0]}, "csr")  # 1-D: stays dense, pruned entries zero
    assert skipped.skipped and nan_equal(skipped.params["v"], reference[0])
    float_masks = {"weight": mask.float()}  # compat-style float masks too
    assert nan_equal(finalize(params, float_masks).params["weight"], reference)
    assert nan_equal(to_sparse(params, float_masks, "coo").params["weight"].to_dense(), reference)


@pytest.mark.parametrize("layout", ["csr", "coo"])
@pytest.mark.parametrize("kept_nonfinite", [False, True])
def test_verify_accepts_a_correct_export_of_nonfinite_weights(layout, kept_nonfinite):
    lin, params, masks = nonfinite_linear()
    if kept_nonfinite:
        masks["weight"][1, 0] = True
        params["weight"][1, 0] = NAN
    x = torch.randn(5, 6)
    exported = to_sparse(params, masks, layout).params
    check = verify(params, masks, exported, lin if layout == "csr" else None, (x,))
    assert check.ok and check.mismatched == () and check.max_abs_diff < 1e-5
    finalized = finalize(params, masks).params
    assert verify(params, masks, finalized, lin, (x,)).ok
    if not kept_nonfinite:  # pruned NaN/inf reach no output
        assert torch.func.functional_call(lin, finalized, (x,)).isfinite().all()


def test_verify_still_flags_a_pruned_nan_left_in_the_export():
    lin, params, masks = nonfinite_linear()
    exported = dict(finalize(params, masks).params)
    exported["weight"] = exported["weight"].clone()
    exported["weight"][0, 0] = NAN  # a pruned entry that is not zero
    check = verify(params, masks, exported, lin, (torch.randn(3, 6),))
    assert not check.ok and check.mismatched == ("weight",) and check.max_abs_diff == INF


# --- verify on modules returning tuples, lists, dicts -----------------------------------------------------


class Outputs(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.a, self.b = kind, nn.Linear(6, 4), nn.Linear(6, 2)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        if self.kind == "tuple":
            return a, b
        if self.kind == "list":
            return [a, b, None, 3]
        return {"a": a, "more": (b, {"n": 3})}


@pytest.mark.parametrize("kind", ["tuple", "list", "dict"])
def test_verify_compares_every_tensor_of_a_structured_output(kind):
    model = Outputs(kind)
    params = {k: v.detach() for k, v in model.named_parameters()}
    masks = fp.prune(params, fp.l1_unstructured, 0.5, include=["a.weight", "b.weight"])
    x = torch.randn(5, 6)
    check = verify(params, masks, to_sparse(params, masks, "csr").params, model, (x,))
    assert check.ok and check.mismatched == () and check.max_abs_diff < 1e-5
    # An export wrong only in the *second* output's layer is caught, with that output's gap.
    exported = dict(to_sparse(params, masks, "csr").params)
    exported["b.bias"] = params["b.bias"] + 1.0
    check = verify(params, masks, exported, model, (x,))
    assert not check.ok and check.mismatched == ("b.bias",)
    assert check.max_abs_diff == pytest.approx(1.0, abs=1e-5)


def test_verify_rejects_outputs_it_cannot_compare():
    class Opaque:
        def __init__(self, t):
            self.t = t

        def __eq__(self, other):
            raise RuntimeError("no")

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return Opaque(self.fc(x))

    model = Model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    with pytest.raises(TypeError, match="Opaque"):
        verify(params, None, params, model, (torch.ones(1, 2),))


# --- corrupt, truncated or empty checkpoints raise ValueError, never load wrong masks


def checkpoint():
    torch.manual_seed(0)
    masks = {"fc.weight": torch.rand(9, 13) > 0.5, "fc.bias": torch.rand(9) > 0.3}
    buffer = io.BytesIO()
    save_masks(masks, buffer)
    return masks, buffer.getvalue()


def member_spans(raw):
    """``{archive member: (start, end)}`` of each member's bytes, from its local zip header."""
    spans = {}
    for info in zipfile.ZipFile(io.BytesIO(raw)).infolist():
        h = info.header_offset
        start = h + 30 + int.from_bytes(raw[h + 26 : h + 28], "little") + int.from_bytes(raw[h + 28 : h + 30], "little")
        spans[info.filename.split("/", 1)[1]] = (start, start + info.compress_size)
    return spans


def load_or_error(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about some corrupt pickle headers
        try:
            return load_masks(io.BytesIO(data))
        except ValueError as err:
            return err


def test_flipped_bits_raise_naming_the_leaf():
    masks, raw = checkpoint()
    spans = member_spans(raw)
    storages = [span for name, span in spans.items() if name.startswith("data/")]
    start, end = max(storages, key=lambda span: span[1] - span[0])  # the larger: fc.weight's 15 bytes of bits
    assert end - start == 15
    for offset in range(start, end):
        for flip in (0x01, 0x80, 0xFF):
            data = bytearray(raw)
            data[offset] ^= flip
            with pytest.raises(ValueError, match="<BytesIO>: leaf 'fc.weight': checksum mismatch"):
                load_masks(io.BytesIO(bytes(data)))


def test_flipped_bytes_anywhere_never_load_a_wrong_mask():
    masks, raw = checkpoint()
    spans = member_spans(raw)
    pickle_start, pickle_end = spans["data.pkl"]
    payload = set(range(pickle_start, pickle_end))
    for name, (start, end) in spans.items():
        if name.startswith("data/"):
            payload |= set(range(start, end))
    raised = 0
    for offset in sorted(payload | set(range(0, len(raw), 5))):
        out = load_or_error(bytes(raw[:offset]) + bytes([raw[offset] ^ 0xFF]) + raw[offset + 1 :])
        if isinstance(out, ValueError):
            raised += 1
            assert "<BytesIO>" in str(out)
        else:  # a flip in zip bookkeeping torch does not read: the masks are the right ones
            assert set(out) == set(masks) and all(torch.equal(out[k], masks[k]) for k in masks), offset
    assert raised > len(payload) // 2


@pytest.mark.parametrize("where", ["path", "file"])
def test_empty_and_truncated_checkpoints_raise_value_error_naming_the_file(tmp_path, where):
    masks, raw = checkpoint()
    cuts = sorted({0, 1, 2, 30, 64, 100, len(raw) // 2, len(raw) - 22, len(raw) - 1} | set(range(0, len(raw), 97)))
    for cut in cuts:
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(raw[:cut])
        source = path if where == "path" else open(path, "rb")
        try:
            with pytest.raises(ValueError, match=f"{path.name}'?: not a readable mask checkpoint: the file is"):
                load_masks(source)
        finally:
            if where == "file":
                source.close()
    with pytest.raises(ValueError, match="<BytesIO>: not a readable mask checkpoint: the file is empty"):
        load_masks(io.BytesIO(b""))
    with pytest.raises(FileNotFoundError):
        load_masks(tmp_path / "missing.pt")


def test_checkpoint_structure_damage_raises_naming_file_and_leaf(tmp_path):
    masks, raw = checkpoint()
    good = torch.load(io.BytesIO(raw), weights_only=True)

    def saved(data):
        path = tmp_path / f"damaged{len(list(tmp_path.iterdir()))}.pt"
        torch.save(data, path)
        return path

    def damaged(leaf=None, **changes):
        data = copy.deepcopy(good)
        target = data["masks"][leaf] if leaf else data
        for key, value in changes.items():
            if value is None:
                del target[key]
            else:
                target[key] = value
        return saved(data)

    cases = [
        (damaged("fc.weight", shape=[13, 9]), "leaf 'fc.weight': checksum mismatch"),
        (damaged("fc.weight", shape=[9, 14]), "leaf 'fc.weight': 15 bytes of bits do not fit shape"),
        (damaged("fc.weight", shape="9x13"), "leaf 'fc.weight': corrupt shape"),
        (damaged("fc.weight", shape=[9, -13]), "leaf 'fc.weight': corrupt shape"),
        (damaged("fc.weight", bits=good["masks"]["fc.weight"]["bits"].float()), "leaf 'fc.weight': corrupt bits"),
        (damaged("fc.bias", bits=None), "leaf 'fc.bias': corrupt bits"),
        (damaged("fc.bias", crc32=None), "leaf 'fc.bias': the checksum is missing"),
        (damaged("fc.bias", crc32="x"), "leaf 'fc.bias': corrupt checksum"),
        (damaged(masks=None), "no 'masks' dict"),
        (damaged(crc32=None), "checkpoint's checksum is missing"),
        (damaged(version=None), "unsupported mask checkpoint version None"),
        (damaged(version=2.0), "unsupported mask checkpoint version 2.0"),
        (saved({**good, "masks": {"fc.weight": good["masks"]["fc.weight"]}}), "a leaf is missing"),
        (saved({**good, "masks": {"fc.weighs": good["masks"]["fc.weight"]}}), "leaf 'fc.weighs': checksum mismatch"),
        (saved({**good, "masks": {"fc.weight": [1, 2]}}), "leaf 'fc.weight': corrupt entry"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError) as info:
            load_masks(path)
        assert str(info.value).startswith(f"'{path}': ") and message in str(info.value), (message, info.value)


def test_version_1_checkpoints_without_checksums_still_load(tmp_path):
    masks, raw = checkpoint()
    good = torch.load(io.BytesIO(raw), weights_only=True)
    v1 = {
        "format": "funcprune.masks",
        "version": 1,
        "masks": {name: {"shape": e["shape"], "bits": e["bits"]} for name, e in good["masks"].items()},
    }
    torch.save(v1, tmp_path / "v1.pt")
    loaded = load_masks(tmp_path / "v1.pt")
    assert set(loaded) == set(masks) and all(torch.equal(loaded[k], masks[k]) for k in masks)
    v1["masks"]["fc.weight"]["crc32"] = 123  # a checksum present (e.g. a version byte flipped 2 -> 1) is checked
    torch.save(v1, tmp_path / "v1.pt")
    with pytest.raises(ValueError, match="leaf 'fc.weight': checksum mismatch"):
        load_masks(tmp_path / "v1.pt")


@pytest.mark.parametrize("module", ["funcprune.export", "funcprune.schedules", "funcprune.saliency"])
def test_public_surface_lists_every_function_and_result_type(module):
    import importlib
    import inspect
    import typing

    mod = importlib.import_module(module)
    assert all(hasattr(mod, name) for name in mod.__all__)
    for name, obj in vars(mod).items():
        if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != mod.__name__:
            continue
        assert name in mod.__all__, name
        result = typing.get_type_hints(obj).get("return")
        if isinstance(result, type) and issubclass(result, tuple) and hasattr(result, "_fields"):  # a NamedTuple
            assert result.__name__ in mod.__all__ and getattr(mod, result.__name__) is result, (name, result)


def test_semi_structured_conversion_zeroes_pruned_nan(monkeypatch):
    """The 2:4 layout too: a pruned NaN/inf is zero in what reaches torch's conversion (faked on CPU)."""
    import funcprune._semistructured as semi

    w, mask = two_four(32, 64, torch.float16)
    w = w.clone()
    w[~mask] = torch.tensor([NAN, INF], dtype=torch.float16).repeat(int((~mask).sum()) // 2)
    monkeypatch.setattr(semi, "semi_structured_available", lambda device: (True, ""))
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda value: value.clone())
    out = to_semi_structured(w, mask)
    assert torch.equal(out, torch.where(mask, w, 0)) and not out[~mask].any()
    exported = to_sparse({"w": w}, {"w": mask}, "semi_structured")
    assert exported.skipped == {} and torch.equal(exported.params["w"], torch.where(mask, w, 0))


def test_verify_refuses_a_pruned_module_whose_hooks_would_hide_the_export():
    import funcprune.compat as prune

    lin = prune.l1_unstructured(torch.nn.Linear(4, 3), "weight", 0.5)
    params, masks = fp.from_module(lin)
    params = {name: value.detach() for name, value in params.items()}
    wrong = dict(fp.export.to_sparse(params, masks, "coo").params, weight=torch.full((3, 4), 7.0))
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"pruning hooks.*\['weight'\]"):
        fp.export.verify(params, masks, wrong, lin, (x,))
    plain = fp.to_module(copy.deepcopy(lin), masks={})
    check = fp.export.verify(params, masks, wrong, plain, (x,))
    assert not check.ok and check.mismatched == ("weight",) and check.max_abs_diff > 1.0
    assert fp.export.verify(params, masks, fp.export.to_sparse(params, masks).params, plain, (x,)).ok
