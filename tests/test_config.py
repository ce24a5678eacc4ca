import json

import pytest

from vernacular.model import ModelConfig


def test_presets_load_and_roundtrip():
    names = ModelConfig.presets()
    assert {"tiny", "moe-1b", "lite-16b", "deepseek-v3-671b"} <= set(names)
    for name in names:
        cfg = ModelConfig.load(name)
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg
        assert ModelConfig.load(cfg) == cfg and ModelConfig.load(cfg.to_dict()) == cfg


def test_deepseek_v3_preset_is_exact():
    c = ModelConfig.load("deepseek-v3-671b")
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.moe_intermediate_size) == (129280, 7168, 18432, 2048)
    assert (c.num_hidden_layers, c.num_attention_heads, c.q_lora_rank, c.kv_lora_rank) == (61, 128, 1536, 512)
    assert (c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim) == (128, 64, 128)
    assert (c.n_routed_experts, c.n_shared_experts, c.num_experts_per_tok, c.n_group, c.topk_group) == (256, 1, 8, 8, 4)
    assert (c.first_k_dense_replace, c.routed_scaling_factor, c.num_nextn_predict_layers) == (3, 2.5, 1)
    assert c.rope_scaling["type"] == "yarn" and c.rope_scaling["factor"] == 40


def test_from_file_toml_json_and_overrides(tmp_path):
    cfg = ModelConfig.load("tiny", hidden_size=128, q_lora_rank=48)
    assert cfg.hidden_size == 128 and cfg.q_lora_rank == 48
    j = tmp_path / "m.json"
    j.write_text(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_file(j) == cfg and ModelConfig.load(str(j)) == cfg
    t = tmp_path / "m.toml"
    t.write_text("[model]\nhidden_size = 64\nnum_attention_heads = 2\n")
    loaded = ModelConfig.load(t)
    assert loaded.hidden_size == 64 and loaded.num_attention_heads == 2 and loaded.q_lora_rank is None


def test_unknown_keys_are_listed():
    with pytest.raises(ValueError, match=r"unknown ModelConfig keys \['hiden_size', 'n_experts'\]"):
        ModelConfig.from_dict({"hiden_size": 3, "n_experts": 2})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"topk_group": 3, "n_group": 2}, "topk_group"),
        ({"n_routed_experts": 10, "n_group": 4}, "divisible by n_group"),
        ({"qk_rope_head_dim": 31}, "even"),
        ({"first_k_dense_replace": 9}, "first_k_dense_replace"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"num_experts_per_tok": 9, "n_group": 4, "topk_group": 2}, "num_experts_per_tok"),
        ({"rope_scaling": {"type": "linear", "factor": 2}}, "yarn"),
        ({"rope_scaling": {"type": "yarn"}}, "factor"),
        ({"mtp_loss_weight": -1.0}, "mtp_loss_weight"),
    ],
)
def test_validation_messages(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.load("tiny", **overrides)


def test_unknown_preset_lists_presets(tmp_path):
    with pytest.raises(ValueError, match="tiny"):
        ModelConfig.load("no-such-preset")
    with pytest.raises(FileNotFoundError):
        ModelConfig.load(tmp_path / "missing.toml")


def test_softmax_scale_yarn_matches_transformers():
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as hf

    c = ModelConfig.load("deepseek-v3-671b")
    rope_parameters = {"rope_type": "yarn", **{k: v for k, v in c.rope_scaling.items() if k != "type"}}
    assert c.softmax_scale == pytest.approx(hf.yarn_apply_mscale(rope_parameters, c.qk_head_dim**-0.5), rel=1e-12)
    assert ModelConfig.load("tiny").softmax_scale == pytest.approx(64**-0.5)
