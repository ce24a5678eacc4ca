import argparse
import json

import pytest
import torch

from vernacular.model import LatentKVCache, ModelConfig, build_model
from vernacular.model import cli as model_cli
from vernacular.model.info import count_parameters, flops_per_token, kv_cache_bytes_per_token, parameter_breakdown


pytestmark = pytest.mark.usefixtures("one_thread")


def _run_cli(argv, capsys):
    parser = argparse.ArgumentParser()
    model_cli.add_arguments(parser)
    rc = model_cli.main(parser.parse_args(argv))
    return rc, capsys.readouterr()


def test_counts_match_an_instantiated_model():
    cfg = ModelConfig.load("tiny", tie_word_embeddings=False)
    model = build_model(cfg)
    b = parameter_breakdown(cfg)
    main = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp."))
    mtp = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp."))
    assert b.total == main and b.mtp_total == mtp
    # active: routed experts count k/E of their weights, everything else fully
    frac = cfg.num_experts_per_tok / cfg.n_routed_experts
    active = sum(
        p.numel() * (frac if ".experts." in n else 1.0) for n, p in model.named_parameters() if not n.startswith("mtp.")
    )
    assert b.active == round(active)
    assert count_parameters(cfg) == (b.total, b.active)
    assert model.num_parameters() == b.total and model.num_parameters(active=True) == b.active


def test_tied_embeddings_are_counted_once():
    cfg = ModelConfig.load("tiny", tie_word_embeddings=True)
    model = build_model(cfg)
    main = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp."))
    assert parameter_breakdown(cfg).total == main


def test_deepseek_v3_counts():
    b = parameter_breakdown(ModelConfig.load("deepseek-v3-671b"))
    assert abs(b.total / 671e9 - 1) < 0.01
    assert abs(b.total_release / 685e9 - 1) < 0.01  # main model + MTP layer with its own embedding/head copies
    # DeepSeek's "37B activated" lies between the weights a token touches and those without the embedding lookup
    assert b.active_compute <= 37e9 <= b.active
    assert abs(b.active / 37e9 - 1) < 0.015 and abs(b.active_compute / 37e9 - 1) < 0.015


def test_flops_and_kv_cache():
    cfg = ModelConfig.load("deepseek-v3-671b")
    b = parameter_breakdown(cfg)
    f1, f2 = flops_per_token(cfg, 1024, include_mtp=False), flops_per_token(cfg, 2048, include_mtp=False)
    attn_slope = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim)
    assert f2 - f1 == pytest.approx(attn_slope * 1024)
    assert f1 == pytest.approx(6 * (b.active_non_embedding + cfg.vocab_size * cfg.hidden_size) + attn_slope * 1024)
    assert flops_per_token(cfg, 1024) > f1  # MTP adds its block and lm_head
    kv = kv_cache_bytes_per_token(cfg, 2)
    assert kv.latent == (512 + 64) * 61 * 2
    assert kv.mha == 128 * (192 + 128) * 61 * 2


def test_latent_cache_size_matches_accounting():
    cfg = ModelConfig.load("tiny")
    cache = LatentKVCache(cfg, num_slots=3, max_len=10, dtype=torch.bfloat16)
    assert cache.nbytes == kv_cache_bytes_per_token(cfg, 2).latent * 3 * 10


@pytest.mark.parametrize("preset", ModelConfig.presets())
def test_cli_info_every_preset(preset, capsys):
    rc, out = _run_cli(["info", "--config", preset, "--json", "--seq-len", "2048"], capsys)
    assert rc == 0
    info = json.loads(out.out)
    assert info["parameters"] == parameter_breakdown(ModelConfig.load(preset)).__dict__
    assert info["flops_per_token"]["train_without_mtp"] == flops_per_token(ModelConfig.load(preset), 2048, False)
    assert info["kv_cache_bytes_per_token"]["mha_over_latent"] > 1
    rc, out = _run_cli(["info", "--config", preset], capsys)
    assert rc == 0 and "active per token" in out.out and "MHA / latent" in out.out


def test_cli_bad_config(capsys, tmp_path):
    rc, out = _run_cli(["info", "--config", "nope"], capsys)
    assert rc == 2 and "presets" in out.err
    bad = tmp_path / "bad.toml"
    bad.write_text("hidden_size = 64\nnum_layers = 3\n")
    rc, out = _run_cli(["info", "--config", str(bad)], capsys)
    assert rc == 2 and "num_layers" in out.err
    rc, out = _run_cli(["presets"], capsys)
    assert rc == 0 and "deepseek-v3-671b" in out.out.split()


def test_serving_presets_fit_vllms_mla_kernels(capsys):
    """vLLM's MLA takes kv_lora_rank + qk_rope_head_dim as head size: {320, 512, 576} on GPU, 576 on CPU."""
    from vernacular.model.info import vllm_mla_support

    for name in ModelConfig.presets():
        cfg = ModelConfig.load(name)
        check = vllm_mla_support(cfg)
        assert check["head_size"] == cfg.kv_lora_rank + cfg.qk_rope_head_dim
        if name != "tiny":  # every preset meant for serving: DeepSeek's 512 + 64
            assert (cfg.kv_lora_rank, cfg.qk_rope_head_dim) == (512, 64), name
            assert check == {"head_size": 576, "gpu": True, "cpu": True, "advice": None}, name
    tiny = vllm_mla_support(ModelConfig.load("tiny"))
    assert not tiny["gpu"] and not tiny["cpu"] and "VLLM_MLA_DISABLE=1" in tiny["advice"]
    gpu_only = vllm_mla_support(ModelConfig.load("tiny", kv_lora_rank=256, qk_rope_head_dim=64))
    assert gpu_only["gpu"] and not gpu_only["cpu"] and "CPU" in gpu_only["advice"]
    assert not vllm_mla_support(ModelConfig.load("moe-1b", kv_lora_rank=256, qk_rope_head_dim=32))["gpu"]  # 288

    rc, out = _run_cli(["info", "--config", "tiny"], capsys)
    assert rc == 0 and "is not an MLA head size vLLM supports" in out.out and "VLLM_MLA_DISABLE=1" in out.out
    rc, out = _run_cli(["info", "--config", "moe-1b", "--json"], capsys)
    assert rc == 0 and json.loads(out.out)["vllm_mla"]["head_size"] == 576
