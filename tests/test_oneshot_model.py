"""Model-level one-shot pruning against the papers' sequential procedure (tests/_oneshot_ref.py) on tiny HF models.

Not marked slow: each test takes 0.1-1.6 s (one thread; the first one also pays ~20 s of importing
transformers' model code, as any first transformers test does).
"""

import copy
import math

import pytest
import torch
from _oneshot_ref import prune_model

import funcprune as fp
from funcprune.oneshot import all_reduce, find_blocks, prune
from funcprune.oneshot.stats import Collector

transformers = pytest.importorskip("transformers")
VOCAB = 64


def _llama():
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return transformers.LlamaForCausalLM(cfg), "model.layers"


def _gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg), "transformer.h"


def _opt():
    cfg = transformers.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
    )
    return transformers.OPTForCausalLM(cfg), "model.decoder.layers"


MODELS = {"llama": _llama, "gpt2": _gpt2, "opt": _opt}


def _model(kind, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model, blocks = MODELS[kind]()
    return model.to(dtype), blocks


def _batches(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (2, 16), generator=g) for _ in range(n)]


def _pruned_weight(result, name):
    return torch.where(result.masks[name], result.params[name], 0)


@pytest.mark.parametrize("kind", list(MODELS))
def test_wanda_masks_equal_the_sequential_reference_bit_for_bit(kind):
    model, blocks = _model(kind)
    batches = _batches()
    got = prune(model, batches, "wanda", 0.5, dtype=torch.float64)
    ref = prune_model(model, blocks, batches, "wanda", 0.5, dtype=torch.float64)
    assert sorted(got.masks) == sorted(ref)
    for name, (weight, keep) in ref.items():
        assert torch.equal(got.masks[name], keep), name
        assert torch.equal(_pruned_weight(got, name), weight), name
        assert got.params[name] is dict(model.named_parameters())[name]  # not copied


@pytest.mark.parametrize("kind", list(MODELS))
def test_sparsegpt_masks_equal_and_weights_to_round_off_of_the_sequential_reference_in_float64(kind):
    model, blocks = _model(kind)
    batches = _batches()
    got = prune(model, batches, "sparsegpt", 0.5, dtype=torch.float64)
    ref = prune_model(model, blocks, batches, "sparsegpt", 0.5, dtype=torch.float64)
    for name, (weight, keep) in ref.items():
        assert torch.equal(got.masks[name], keep), name
        torch.testing.assert_close(got.params[name], weight, rtol=0, atol=1e-12)
        assert not bool(got.params[name][~keep].any())


def test_sparsegpt_float32_masks_equal_and_weights_to_float32_round_off():
    model, blocks = _model("llama", torch.float32)
    batches = _batches()
    got = prune(model, batches, "sparsegpt", 0.5)
    ref = prune_model(model, blocks, batches, "sparsegpt", 0.5)
    for name, (weight, keep) in ref.items():
        assert torch.equal(got.masks[name], keep), name
        torch.testing.assert_close(got.params[name], weight, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", [(2, 4), (4, 8)])
def test_nm_patterns_equal_the_reference(method, pattern):
    model, blocks = _model("llama")
    batches = _batches()
    got = prune(model, batches, method, 0.5, pattern=pattern, block_size=32, dtype=torch.float64)
    n, m = pattern
    ref = prune_model(model, blocks, batches, method, 0.5, m - n, m, blocksize=32, dtype=torch.float64)
    for name, (weight, keep) in ref.items():
        assert torch.equal(got.masks[name], keep), name
        assert bool(fp.patterns.satisfies_nm(got.masks[name], n, m).all())
        torch.testing.assert_close(_pruned_weight(got, name), weight, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_one_pass_from_the_dense_model_equals_the_reference_without_feeding_pruned_outputs(method):
    model, blocks = _model("gpt2")
    batches = _batches()
    got = prune(model, batches, method, 0.5, sequential=False, dtype=torch.float64)
    ref = prune_model(model, blocks, batches, method, 0.5, sequential=False, dtype=torch.float64)
    for name, (weight, keep) in ref.items():
        assert torch.equal(got.masks[name], keep), name
        torch.testing.assert_close(_pruned_weight(got, name), weight, rtol=0, atol=1e-12)


def test_owl_amounts_and_masks_equal_owls_procedure():
    model, blocks = _model("llama", seed=3)
    batches = _batches()
    got = prune(model, batches, "wanda", 0.7, owl=True, owl_threshold=5.0, owl_lam=0.08, dtype=torch.float64)
    ref = prune_model(model, blocks, batches, "wanda", 0.7, owl=(5.0, 0.08), dtype=torch.float64, count=round)
    floored = prune_model(model, blocks, batches, "wanda", 0.7, owl=(5.0, 0.08), dtype=torch.float64)
    # the script floors each row's count: at the non-whole OWL amounts some rows keep one entry more
    assert any(not torch.equal(got.masks[n], k) for n, (_, k) in floored.items())
    amounts = {got.layers[n].block: got.layers[n].amount for n in got.layers}
    assert len(set(amounts.values())) == 2 and sum(amounts.values()) / 2 == pytest.approx(0.7, abs=1e-12)
    for name, (_, keep) in ref.items():
        assert torch.equal(got.masks[name], keep), name


@pytest.mark.parametrize("method, sequential", [("wanda", True), ("sparsegpt", True), ("sparsegpt", False)])
def test_a_list_of_levels_equals_one_run_per_level_stacked(method, sequential):
    model, _ = _model("llama")
    batches = _batches(2)
    levels = [0.25, 0.5]
    got = prune(model, batches, method, levels, sequential=sequential, dtype=torch.float64)
    singles = [prune(model, batches, method, a, sequential=sequential, dtype=torch.float64) for a in levels]
    assert got.stacked == ("both" if method == "sparsegpt" else "masks")
    assert torch.equal(
        got.masks["model.layers.1.mlp.down_proj.weight"],
        torch.stack([s.masks["model.layers.1.mlp.down_proj.weight"] for s in singles]),
    )
    for name in got.masks:
        for k, single in enumerate(singles):
            assert torch.equal(got.masks[name][k], single.masks[name]), name
            if method == "sparsegpt":
                assert torch.equal(got.params[name][k], single.params[name]), name
    x = batches[0]
    out = fp.stacked_call(model, got.params, (x,), {"use_cache": False}, masks=got.masks, stacked=got.stacked).logits
    for k, single in enumerate(singles):
        expected = fp.functional_call(model, single.params, (x,), masks=single.masks).logits
        torch.testing.assert_close(out[k], expected)
    assert got.layers["model.layers.0.self_attn.q_proj.weight"].amount == (0.25, 0.5)


def test_the_model_is_not_modified_and_the_result_runs_as_the_reference_pruned_model():
    model, blocks = _model("gpt2")
    model.train()
    before = copy.deepcopy(model.state_dict())
    batches = _batches()
    got = prune(model, batches, "sparsegpt", 0.5, dtype=torch.float64)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ref = prune_model(model, blocks, batches, "sparsegpt", 0.5, dtype=torch.float64)
    pruned = copy.deepcopy(model).eval()
    for name, (weight, _) in ref.items():
        pruned.get_parameter(name).data.copy_(weight)
    model.eval()
    out = fp.functional_call(model, got.params, (batches[0],), masks=got.masks).logits
    torch.testing.assert_close(out, pruned(batches[0]).logits, rtol=0, atol=1e-10)


def test_calibration_batches_as_tensor_tuple_or_dict_give_the_same_masks():
    model, _ = _model("llama")
    batches = _batches(2)
    dicts = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in batches]
    forms = (batches, [(b,) for b in batches], dicts)
    masks = [prune(model, form, "wanda", 0.5, dtype=torch.float64).masks for form in forms]
    for name in masks[0]:
        assert torch.equal(masks[0][name], masks[1][name]) and torch.equal(masks[0][name], masks[2][name])


def test_device_runs_one_block_copy_at_a_time_with_the_same_result():
    model, _ = _model("opt")
    batches = _batches(2)
    a = prune(model, batches, "sparsegpt", 0.5, dtype=torch.float64)
    b = prune(model, batches, "sparsegpt", 0.5, dtype=torch.float64, device="cpu")
    for name in a.masks:
        assert torch.equal(a.masks[name], b.masks[name]) and torch.equal(a.params[name], b.params[name])


def test_magnitude_is_torchs_l1_unstructured_per_layer_and_needs_no_forward():
    model, _ = _model("llama")
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    got = prune(model, [torch.zeros(1, 4, dtype=torch.long)], "magnitude", 0.3)
    handle.remove()
    assert not calls
    for name, keep in got.masks.items():
        weight = model.get_parameter(name)
        assert torch.equal(keep, fp.l1_unstructured(weight, 0.3)), name
    nm = prune(model, [torch.zeros(1, 4, dtype=torch.long)], "magnitude", None, pattern=(2, 4))
    w = model.get_parameter("model.layers.0.mlp.down_proj.weight")
    assert torch.equal(nm.masks["model.layers.0.mlp.down_proj.weight"], fp.patterns.nm_structured(w, 2, 4))


def test_include_selects_weights_by_name_or_predicate():
    model, _ = _model("llama")
    names = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.v_proj.weight"]
    got = prune(model, _batches(1), "wanda", 0.5, include=names)
    assert sorted(got.masks) == sorted(names)
    got = prune(model, _batches(1), "wanda", 0.5, include=lambda n, p: "mlp" in n)
    assert len(got.masks) == 6 and all("mlp" in n for n in got.masks)


def _tiny(cls_name, **extra):
    config = getattr(transformers, cls_name + "Config")(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **extra,
    )
    return getattr(transformers, cls_name + "ForCausalLM")(config)


def test_blocks_are_found_for_hf_decoders_and_by_dotted_name():
    for kind, factory in MODELS.items():
        model, blocks = factory()
        assert find_blocks(model)[0] == blocks, kind
    assert find_blocks(_llama()[0].model)[0] == "layers"
    assert find_blocks(_gpt2()[0].transformer)[0] == "h"
    assert find_blocks(_opt()[0].model)[0] == "decoder.layers"
    for name in ("Qwen2", "Mistral"):
        assert find_blocks(_tiny(name))[0] == "model.layers", name
    model, _ = _llama()
    assert find_blocks(model, "model.layers")[1] is model.model.layers


def test_a_bfloat16_model_is_pruned_with_float32_statistics_and_keeps_its_dtype():
    torch.manual_seed(0)
    model = _tiny("Qwen2").to(torch.bfloat16)
    got = prune(model, _batches(1), "sparsegpt", 0.5)
    name = "model.layers.1.mlp.down_proj.weight"
    assert got.params[name].dtype == torch.bfloat16 and not bool(got.params[name][~got.masks[name]].any())
    assert got.layers[name].sparsity == 0.5 and got.layers[name].tokens == 32
    out = fp.functional_call(model, got.params, (_batches(1)[0],), {"use_cache": False}, masks=got.masks)
    assert bool(torch.isfinite(out.logits).all())


def test_layers_reading_one_input_share_one_statistic():
    model, _ = _model("llama")
    block = model.model.layers[0]
    layers = {n: (m, m.in_features) for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}
    with Collector(layers, sumsq=True, hessian=True, dtype=torch.float64) as col, torch.no_grad():
        col.new_batch()
        model(_batches(1)[0])
    keys = col.key_of
    assert keys["self_attn.k_proj"] == keys["self_attn.v_proj"] == keys["self_attn.q_proj"] == "self_attn.q_proj"
    assert keys["mlp.up_proj"] == keys["mlp.gate_proj"] == "mlp.gate_proj"
    assert sorted(col.stats()) == ["mlp.down_proj", "mlp.gate_proj", "self_attn.o_proj", "self_attn.q_proj"]


def test_all_reduce_without_torch_distributed_returns_the_statistics():
    stats = {"a": fp.oneshot.LayerStats(torch.ones(3), None, torch.tensor(4))}
    assert all_reduce(stats) is stats


def _raises_and_unchanged(model, exc, match, *args, **kwargs):
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(exc, match=match):
        prune(model, *args, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        (([], "wanda", 0.5), {}, ValueError, "calibration is empty"),
        ((None, "obs", 0.5), {}, ValueError, "method must be one of"),
        ((None, "wanda", 1.5), {}, ValueError, "amount=1.5"),
        ((None, "wanda", []), {}, ValueError, "empty list"),
        ((None, "sparsegpt", 3), {}, TypeError, "fractions"),
        ((None, "wanda", 0.5), {"pattern": (2, 3)}, ValueError, "model.layers.0.self_attn.q_proj.weight: pattern 2:3"),
        ((None, "wanda", 0.5), {"blocks": "model.nope"}, ValueError, "pass blocks="),
        ((None, "wanda", 0.5), {"blocks": "model.norm"}, ValueError, "not a non-empty nn.ModuleList"),
        (
            (None, "wanda", 0.5),
            {"include": ["model.embed_tokens.weight"]},
            ValueError,
            "not the weight of an nn.Linear",
        ),
        ((None, "wanda", 0.5), {"include": ["lm_head.weight"]}, ValueError, "not the weight of an nn.Linear"),
        ((None, "wanda", 0.5), {"include": ["nope.weight"]}, KeyError, "nope.weight"),
        ((None, "wanda", 0.5), {"dtype": torch.float16}, ValueError, "dtype"),
    ],
)
def test_bad_input_raises_naming_the_thing_and_leaves_the_model_unchanged(args, kwargs, exc, match):
    model, _ = _model("llama")
    args = (args[0] if args[0] is not None else _batches(1),) + args[1:]
    _raises_and_unchanged(model, exc, match, *args, **kwargs)


def test_blocks_not_found_says_what_to_pass():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ModuleList([torch.nn.Linear(4, 4)]))
    with pytest.raises(ValueError, match=r"could not find .* pass blocks=.*ModuleLists: \['1'\]"):
        prune(model, [torch.ones(1, 4)], "wanda", 0.5)


def test_nan_activations_name_the_block_and_layer():
    model, _ = _model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = math.inf  # inf activations reach down_proj of block 1
    _raises_and_unchanged(
        model, ValueError, r"model.layers.1.mlp.down_proj.weight: non-finite .* block 1", _batches(1), "wanda", 0.5
    )


def test_fp_oneshot_is_the_submodule():
    import funcprune.oneshot as oneshot

    assert fp.oneshot is oneshot and callable(fp.oneshot.prune) and callable(fp.oneshot.sparsegpt)


def test_one_blocks_statistics_alive_at_a_time(monkeypatch):
    import gc
    import weakref

    import funcprune.oneshot.model as model_module

    alive = []

    def watching(stats, group=None):
        gc.collect()
        assert not [r for r in alive if r() is not None], "an earlier block's statistics are still alive"
        alive.extend(weakref.ref(s.hessian) for s in stats.values())
        return stats

    monkeypatch.setattr(model_module, "all_reduce", watching)
    model, _ = _model("llama")
    prune(model, _batches(2), "sparsegpt", 0.5, dtype=torch.float64)
    assert len(alive) == 2 * 4  # 2 blocks x 4 distinct inputs (q/k/v, o, gate/up, down)


@pytest.mark.parametrize("sequential, forwards", [(False, 2), (True, 2 * 2 * 2)])
def test_k_levels_from_one_dense_pass_or_one_pass_per_level(sequential, forwards):
    model, _ = _model("llama")
    calls = []
    handle = model.model.layers[1].register_forward_pre_hook(lambda *a: calls.append(1))
    prune(model, _batches(2), "wanda", [0.3, 0.5], sequential=sequential, dtype=torch.float64)
    handle.remove()
    assert len(calls) == forwards  # 2 batches; sequential: statistics + rerun per level


@pytest.mark.parametrize("method, needed", [("wanda", "sumsq"), ("sparsegpt", "hessian")])
def test_prune_layer_without_the_statistic_its_method_needs_names_it(method, needed):
    """Rule: prune_layer called without the statistic of its method raises ValueError naming the statistic."""
    from funcprune.oneshot import LayerStats, prune_layer

    weight = torch.randn(4, 8)
    with pytest.raises(ValueError, match=needed):
        prune_layer(weight, None, method, 0.5)
    with pytest.raises(ValueError, match=needed):
        prune_layer(weight, LayerStats(None, None, torch.tensor(3)), method, 0.5)
