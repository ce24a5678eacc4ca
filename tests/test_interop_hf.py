"""Transformers round trip: export -> DeepseekV3ForCausalLM.from_pretrained gives our logits; import gives them back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import argparse

from vernacular.interop import cli_export, cli_import
from vernacular.interop.hf import (
    InteropError,
    export_hf,
    import_hf,
    interleaved_to_half,
    load_checkpoint,
    permute_rope_rows,
    save_checkpoint,
)
from vernacular.model import ModelConfig, build_model

from engines_helpers import randomize_norms_and_router_bias

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency (pip install -e .[dev])")
from transformers import DeepseekV3ForCausalLM  # noqa: E402



def cli(argv: list[str]) -> int:
    """`vernacular export|import ...` through the stage's own parser (as vernacular.cli wires it)."""
    stage, rest = argv[0], argv[1:]
    module = {"export": cli_export, "import": cli_import}[stage]
    parser = argparse.ArgumentParser(prog=f"vernacular {stage}")
    module.add_arguments(parser)
    return module.main(parser.parse_args(rest))

TINY = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    q_lora_rank=None,
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=16,
    v_head_dim=24,  # differs from the q/k head dim on purpose
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=1,
    topk_group=1,
    first_k_dense_replace=1,
    max_position_embeddings=256,
    num_nextn_predict_layers=0,
)

CASES = {
    "plain-q": {},
    "q-lora+groups+yarn": dict(
        q_lora_rank=48,
        n_group=4,
        topk_group=2,
        num_experts_per_tok=3,
        routed_scaling_factor=2.5,
        first_k_dense_replace=2,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "beta_fast": 32,
                      "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    ),
    "no-dense+tied+unnormalised": dict(first_k_dense_replace=0, tie_word_embeddings=True, norm_topk_prob=False,
                                      n_group=2, topk_group=1, n_shared_experts=2),
}


def make_model(seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny model with every weight random: norms away from 1, a random router bias that changes routing."""
    model = build_model(ModelConfig.from_dict({**TINY, **overrides}), seed=seed)
    return randomize_norms_and_router_bias(model, seed + 1)


def tokens(vocab: int, t: int = 40, b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def ours(model, ids) -> torch.Tensor:
    return model(ids).logits


@torch.no_grad()
def theirs(path, ids) -> torch.Tensor:
    hf = DeepseekV3ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return hf(input_ids=ids).logits


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_loads_export_with_same_logits(tmp_path, case):
    model = make_model(**CASES[case])
    ids = tokens(model.config.vocab_size)
    expected = ours(model, ids)
    out = export_hf(model, tmp_path / "hf")

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v3" and cfg["architectures"] == ["DeepseekV3ForCausalLM"]
    assert cfg["rope_interleave"] is True  # DeepSeek's layout, the only one vLLM and llama.cpp apply
    got = theirs(out, ids)
    assert (got - expected).abs().max().item() < 1e-4

    back = import_hf(out)
    assert torch.equal(ours(back, ids), expected)  # bit-identical round trip


def test_router_bias_really_matters_and_is_exported_fp32(tmp_path):
    model = make_model(**CASES["q-lora+groups+yarn"])
    ids = tokens(model.config.vocab_size)
    expected = ours(model, ids)
    unbiased = make_model(**CASES["q-lora+groups+yarn"])
    with torch.no_grad():
        for name, t in unbiased.state_dict().items():
            if name.endswith("e_score_correction_bias"):
                t.zero_()
    assert (ours(unbiased, ids) - expected).abs().max() > 1e-3  # routing depends on the bias ...
    out = export_hf(model, tmp_path / "hf", dtype="bfloat16")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        key = "model.layers.2.mlp.gate.e_score_correction_bias"
        assert f.get_slice(key).get_dtype() == "F32"  # ... so it stays fp32 even in a bf16 export
        assert f.get_slice("model.layers.2.mlp.experts.7.down_proj.weight").get_dtype() == "BF16"
        assert f.get_slice("model.layers.2.mlp.experts.7.gate_proj.weight").get_shape() == [32, 64]
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_mtp_weights_round_trip_in_deepseek_layout(tmp_path):
    model = make_model(num_nextn_predict_layers=2)
    out = export_hf(model, tmp_path / "hf")
    names = load_file(str(out / "model.safetensors")).keys()
    L = model.config.num_hidden_layers
    for k in (0, 1):
        for part in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                     "self_attn.kv_b_proj.weight", "mlp.experts.3.up_proj.weight", "embed_tokens.weight",
                     "shared_head.head.weight"):
            assert f"model.layers.{L + k}.{part}" in names
    assert not any(n.startswith("mtp.") for n in names)
    back = import_hf(out)
    mine, theirs_sd = model.state_dict(), back.state_dict()
    assert mine.keys() == theirs_sd.keys()
    assert all(torch.equal(mine[k], theirs_sd[k]) for k in mine)
    seq = tokens(model.config.vocab_size, t=21)
    ids, labels = seq[:, :-1], seq[:, 1:]
    with torch.no_grad():
        a, b = model(ids, labels=labels), back(ids, labels=labels)
    assert torch.equal(a.mtp_loss, b.mtp_loss)

    # transformers' main model loads (ignoring the extra layers) with the same logits, and its MtpModel (speculative
    # decoding) reads our MTP layers and gives the same MTP loss: depth k sees the previous depth's normalised states
    # and the embedding of token t+k, and predicts token t+k+1.
    from transformers.modeling_layers import MtpModel

    hf = DeepseekV3ForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf._keys_to_ignore_on_load_unexpected = [rf"model\.layers\.{L + k}\..*" for k in range(2)]
    mtp = MtpModel.from_pretrained(hf).eval()
    T = ids.shape[1]
    with torch.no_grad():
        out_hf = hf.model(input_ids=ids)
        assert (hf.lm_head(out_hf.last_hidden_state) - a.logits).abs().max().item() < 1e-4
        h, losses = out_hf.last_hidden_state, []
        for k in (1, 2):
            pos = torch.arange(T - k)[None]
            h = mtp.forward_layer(k - 1, h[:, : T - k], pos, None, input_ids=labels[:, k - 1 : T - 1])
            logits = hf.lm_head(h)
            losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, k:].flatten()))
    assert abs(torch.stack(losses).mean().item() - a.mtp_loss.item()) < 1e-5


def test_export_is_in_deepseek_rope_layout_and_both_layouts_import(tmp_path):
    """The export stores RoPE rows interleaved, as DeepSeek's release (main and MTP layers); a rotate-half folder
    (`rope_interleave: false`, what older exports wrote) imports to the same model too."""
    model = make_model(num_nextn_predict_layers=1, **CASES["q-lora+groups+yarn"])
    c = model.config
    ids = tokens(c.vocab_size)
    expected = ours(model, ids)
    out = export_hf(model, tmp_path / "hf")
    state = load_file(str(out / "model.safetensors"))
    mine = model.state_dict()
    L, nope, rope = c.num_hidden_layers, c.qk_nope_head_dim, c.qk_rope_head_dim
    for layer, ours_prefix in ((0, "model.layers.0."), (L, "mtp.0.block.")):
        q = state[f"model.layers.{layer}.self_attn.q_b_proj.weight"].view(c.num_attention_heads, -1, c.q_lora_rank)
        q_ours = mine[ours_prefix + "self_attn.q_b_proj.weight"].view(c.num_attention_heads, -1, c.q_lora_rank)
        assert torch.equal(q[:, :nope], q_ours[:, :nope])  # no-RoPE rows untouched
        assert torch.equal(q[:, nope:][:, 0::2], q_ours[:, nope:][:, : rope // 2])  # pair (x_i, x_{i+d/2}) adjacent
        assert torch.equal(q[:, nope:][:, 1::2], q_ours[:, nope:][:, rope // 2 :])
        kv, kv_ours = (state[f"model.layers.{layer}.self_attn.kv_a_proj_with_mqa.weight"],
                       mine[ours_prefix + "self_attn.kv_a_proj_with_mqa.weight"])
        assert torch.equal(kv[c.kv_lora_rank :][1::2], kv_ours[c.kv_lora_rank :][rope // 2 :])
    assert torch.equal(ours(import_hf(out), ids), expected)  # we permute back exactly

    halves = permute_rope_rows(state, c, interleaved_to_half(rope))
    save_file(halves, str(out / "model.safetensors"))
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "rope_interleave": False}))
    assert (theirs(out, ids) - expected).abs().max().item() < 1e-4  # transformers reads either layout
    assert torch.equal(ours(import_hf(out), ids), expected)


def test_corrupt_and_mismatched_folders_give_clear_errors(tmp_path):
    model = make_model()
    out = export_hf(model, tmp_path / "hf")
    weights = out / "model.safetensors"
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(InteropError, match="corrupt or truncated"):
        import_hf(out)

    weights.write_bytes(good)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "kv_lora_rank": 16}))
    with pytest.raises(InteropError, match=r"shape mismatches.*kv_a_layernorm"):
        import_hf(out)

    (out / "config.json").write_text(json.dumps({**cfg, "quantization_config": {"quant_method": "fp8"}}))
    with pytest.raises(InteropError, match="FP8"):
        import_hf(out)

    (out / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(weights))
    del state["model.layers.1.mlp.experts.5.up_proj.weight"]
    save_file(state, str(weights))
    with pytest.raises(InteropError, match=r"missing \[5\]"):
        import_hf(out)


def _tokenizer(path: Path) -> Path:
    """A small BPE tokenizer trained on real text (ntrex128), with Vernacular's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from vernacular.data.demo_corpus import demo_lines

    texts = [line for lang in ("eng", "deu", "fra", "pol") for line in demo_lines(lang)[:300]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|end|>"]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=TINY["vocab_size"], special_tokens=special,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>", "pad_token": "<|pad|>", "model_max_length": 256}))
    return path


def test_cli_export_run_dir_with_tokenizer_then_import(tmp_path, capsys):
    run = tmp_path / "run"
    tok_dir = _tokenizer(run / "tokenizer")
    model = make_model(num_nextn_predict_layers=1)
    save_checkpoint(model, run / "checkpoints" / "step_000010")
    older = make_model(seed=3)
    save_checkpoint(older, run / "checkpoints" / "step_000002")

    assert cli(["export", "hf", "--run-dir", str(run)]) == 0
    out = run / "export" / "hf"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "README.md"):
        assert (out / name).exists(), name
    cfg = json.loads((out / "config.json").read_text())
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    assert cfg["bos_token_id"] == tok.token_to_id("<|begin_of_text|>")
    assert cfg["eos_token_id"] == [tok.token_to_id("<|end_of_text|>"), tok.token_to_id("<|end|>")]
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == cfg["eos_token_id"]

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Die Katze schläft auf dem warmen Fensterbrett."
    ids = torch.tensor([hf_tok(text)["input_ids"]])
    assert hf_tok.decode(ids[0]) == text
    assert (theirs(out, ids) - ours(model, ids)).abs().max().item() < 1e-4  # the latest step, not step 2

    ckpt = tmp_path / "imported"
    assert cli(["import", "hf", str(out), "--out", str(ckpt)]) == 0
    assert torch.equal(ours(load_checkpoint(ckpt), ids), ours(model, ids))

    run2 = tmp_path / "run2"
    assert cli(["import", "hf", str(out), "--run-dir", str(run2)]) == 0
    assert (run2 / "tokenizer" / "tokenizer.json").exists()
    assert torch.equal(ours(load_checkpoint(run2 / "checkpoints" / "step_000000"), ids), ours(model, ids))


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    assert cli(["import", "hf", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert cli(["export", "hf", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_export_reads_the_trainers_checkpoint_format(tmp_path):
    """`vernacular pretrain` checkpoints (state.json["model_config"], `latest` pointer, tied weights unshared)."""
    from vernacular.train.checkpoint import save_checkpoint as trainer_save

    model = make_model(**CASES["no-dense+tied+unnormalised"])
    model.config.seq_aux_loss_weight = 0.0  # a training-only field must survive the trip through state.json
    root = tmp_path / "run" / "checkpoints"
    trainer_save(root, 7, model.state_dict(), {}, {"model_config": model.config.to_dict()})
    trainer_save(root, 3, make_model(seed=5, **CASES["no-dense+tied+unnormalised"]).state_dict(), {},
                 {"model_config": model.config.to_dict()})  # `latest` now names step 3, the newest write
    assert cli(["export", "hf", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    ids = tokens(model.config.vocab_size)
    newest = load_checkpoint(root / "step_000003")
    assert (theirs(tmp_path / "hf", ids) - ours(newest, ids)).abs().max().item() < 1e-4
    assert torch.equal(ours(load_checkpoint(root / "step_000007"), ids), ours(model, ids))
    assert load_checkpoint(root / "step_000007").config.seq_aux_loss_weight == 0.0


def test_sharded_folder_imports(tmp_path):
    """Large releases (DeepSeek's included) come as shards with a model.safetensors.index.json."""
    model = make_model()
    out = export_hf(model, tmp_path / "hf")
    state = load_file(str(out / "model.safetensors"))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(out / name))
    (out / "model.safetensors").unlink()
    weight_map = {k: name for name, part in shards.items() for k in part}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ids = tokens(model.config.vocab_size)
    assert torch.equal(ours(import_hf(out), ids), ours(model, ids))
    assert (theirs(out, ids) - ours(model, ids)).abs().max().item() < 1e-4


def test_export_of_bad_checkpoints_reports_the_file(tmp_path):
    model = make_model()
    ckpt = save_checkpoint(model, tmp_path / "ckpt")
    (ckpt / "state.json").write_text('{"model_config": {"hidden_size": 64, "bogus": 1}}')
    with pytest.raises(InteropError, match=r"state.json.*bogus"):
        load_checkpoint(ckpt)
    (ckpt / "state.json").write_text("{not json")
    with pytest.raises(InteropError, match="not valid JSON"):
        load_checkpoint(ckpt)
    (ckpt / "state.json").unlink()  # config.json alone is enough
    assert torch.equal(ours(load_checkpoint(ckpt), tokens(320)), ours(model, tokens(320)))


def _fp8_quantize(w: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's block-wise FP8 (e4m3, one fp32 scale per 128x128 block, 448 = e4m3's largest value), as its
    training quantizes weights for the release: scale_inv = amax / 448, q = w / scale_inv."""
    rows, cols = w.shape
    nr, nc = -(-rows // block), -(-cols // block)
    padded = torch.zeros(nr * block, nc * block)
    padded[:rows, :cols] = w.float()
    blocks = padded.view(nr, block, nc, block)
    scale_inv = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
    q = (blocks / scale_inv[:, None, :, None]).view(nr * block, nc * block)[:rows, :cols]
    return q.to(torch.float8_e4m3fn), scale_inv


def test_dequantize_fp8_blocks_partial_edges():
    from vernacular.interop.hf import dequantize_fp8

    w = torch.randn(300, 200, generator=torch.Generator().manual_seed(0))  # 3x2 blocks, the last ones partial
    q, s = _fp8_quantize(w)
    assert s.shape == (3, 2)
    got = dequantize_fp8(q, s)
    ref = torch.empty_like(w)
    rows = torch.arange(300) // 128
    for j in range(200):  # element (i, j) scaled by block (i // 128, j // 128)
        ref[:, j] = q[:, j].float() * s[rows, j // 128]
    assert torch.equal(got, ref)
    assert (got - w).abs().max() < 0.07 * w.abs().max()  # e4m3 keeps 3 mantissa bits
    with pytest.raises(InteropError, match=r"expected \(3, 2\)"):
        dequantize_fp8(q, s[:, :1])


def test_fp8_release_imports_dequantized_and_any_deepseek_v3_model_type(tmp_path):
    """A folder written as DeepSeek's FP8 release (float8_e4m3fn weights + `weight_scale_inv`, quantization_config,
    sharded) imports with the weights dequantized; a `kimi_k2` model_type of the same architecture imports too."""
    from vernacular.interop.hf import dequantize_fp8

    model = make_model(num_nextn_predict_layers=1, **CASES["q-lora+groups+yarn"])
    out = export_hf(model, tmp_path / "fp8")
    state = load_file(str(out / "model.safetensors"))
    fp8, reference = {}, dict(state)
    for key, t in state.items():
        if key.startswith("model.layers.") and key.endswith("_proj.weight"):
            q, s = _fp8_quantize(t)
            fp8[key], fp8[key[: -len(".weight")] + ".weight_scale_inv"] = q, s
            reference[key] = dequantize_fp8(q, s)
        else:
            fp8[key] = t.to(torch.bfloat16) if "norm" not in key and "bias" not in key else t
            reference[key] = fp8[key].float()
    keys = sorted(fp8)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}  # weight and scale may be apart
    for name, part in shards.items():
        save_file({k: fp8[k] for k in part}, str(out / name))
    (out / "model.safetensors").unlink()
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, part in shards.items() for k in part}}))
    cfg = json.loads((out / "config.json").read_text())
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": [128, 128]}
    (out / "config.json").write_text(json.dumps(cfg))

    imported = import_hf(out)
    ref_dir = tmp_path / "ref"
    export_hf(model, ref_dir)
    save_file(reference, str(ref_dir / "model.safetensors"))
    ids = tokens(model.config.vocab_size)
    assert torch.equal(ours(imported, ids), ours(import_hf(ref_dir), ids))  # dequantized exactly as DeepSeek's kernel
    assert (ours(imported, ids) - ours(model, ids)).abs().max() < 0.5  # and close to the unquantized model

    (out / "config.json").write_text(json.dumps({**cfg, "model_type": "kimi_k2"}))
    assert torch.equal(ours(import_hf(out), ids), ours(imported, ids))
    (out / "config.json").write_text(json.dumps({**cfg, "model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(InteropError, match="not DeepseekV3ForCausalLM"):
        import_hf(out)
    (out / "config.json").write_text(json.dumps({**cfg, "quantization_config": None}))
    with pytest.raises(InteropError, match="no FP8 quantization_config"):
        import_hf(out)
