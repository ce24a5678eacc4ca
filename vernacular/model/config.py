"""Model configuration: one dataclass whose fields are named exactly as transformers' `DeepseekV3Config`.

Why mirror the HF names: the export/import to a transformers folder is then a plain copy of fields, and users who know
DeepSeek-V3's `config.json` can read our presets at a glance. Training-only knobs (bias update speed, balance-loss and
MTP-loss weights) sit at the end; they have no HF counterpart and the export drops them.

Presets are TOML files in `vernacular/configs/<name>.toml`; TOML has no null, so `None` fields (`q_lora_rank`,
`rope_scaling`) are simply omitted there and fall back to their `None` default.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

YARN_KEYS = ("type", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")


@dataclass
class ModelConfig:
    # vocabulary and trunk
    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 768  # dense-MLP width (the first `first_k_dense_replace` layers)
    moe_intermediate_size: int = 128  # width of each routed / shared expert
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    # Multi-head Latent Attention
    q_lora_rank: int | None = None  # None: plain q_proj; else q_a_proj -> q_a_layernorm -> q_b_proj
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 32
    v_head_dim: int = 32
    # DeepSeekMoE
    n_routed_experts: int = 16
    n_shared_experts: int = 1
    num_experts_per_tok: int = 4
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    first_k_dense_replace: int = 1
    # misc
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    num_nextn_predict_layers: int = 1
    initializer_range: float = 0.02
    # training-only (no HF counterpart)
    bias_update_speed: float = 1e-3  # gamma of auxiliary-loss-free balancing
    seq_aux_loss_weight: float = 1e-4  # alpha of the sequence-wise balance loss; 0 disables it
    mtp_loss_weight: float = 0.3  # lambda of the multi-token-prediction loss

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        errors: list[str] = []
        positive = [
            "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
            "num_experts_per_tok", "n_group", "topk_group", "max_position_embeddings",
        ]  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                errors.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("n_routed_experts", "n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                errors.append(f"{name} must be a non-negative integer, got {value!r}")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0):
            errors.append(f"q_lora_rank must be None (plain q_proj) or a positive integer, got {self.q_lora_rank!r}")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range", "routed_scaling_factor"):
            if not float(getattr(self, name)) > 0:
                errors.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("bias_update_speed", "seq_aux_loss_weight", "mtp_loss_weight"):
            if not float(getattr(self, name)) >= 0:
                errors.append(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if errors:  # the checks below assume well-typed fields
            raise ValueError("invalid ModelConfig:\n  " + "\n  ".join(errors))

        if self.qk_rope_head_dim % 2:
            errors.append(f"qk_rope_head_dim must be even (RoPE rotates pairs), got {self.qk_rope_head_dim}")
        if self.first_k_dense_replace > self.num_hidden_layers:
            errors.append(
                f"first_k_dense_replace ({self.first_k_dense_replace}) > num_hidden_layers ({self.num_hidden_layers})"
            )
        if self.has_moe:
            if self.n_routed_experts < 1:
                errors.append("n_routed_experts must be >= 1 when some layer is MoE (first_k_dense_replace < layers)")
            elif self.n_routed_experts % self.n_group:
                errors.append(f"n_routed_experts ({self.n_routed_experts}) must be divisible by n_group ({self.n_group})")
            elif self.n_routed_experts // self.n_group < 2:
                errors.append("each expert group needs >= 2 experts (group score = sum of its top-2 expert scores)")
            if self.topk_group > self.n_group:
                errors.append(f"topk_group ({self.topk_group}) must be <= n_group ({self.n_group})")
            elif self.n_routed_experts and self.num_experts_per_tok > self.topk_group * (
                self.n_routed_experts // self.n_group
            ):
                errors.append(
                    f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds the experts reachable in topk_group "
                    f"({self.topk_group}) groups of {self.n_routed_experts // max(self.n_group, 1)}"
                )
        if self.rope_scaling is not None:
            errors.extend(self._check_rope_scaling(self.rope_scaling))
        if errors:
            raise ValueError("invalid ModelConfig:\n  " + "\n  ".join(errors))

    @staticmethod
    def _check_rope_scaling(rs: Any) -> list[str]:
        if not isinstance(rs, dict):
            return [f"rope_scaling must be None or a dict, got {type(rs).__name__}"]
        errors = []
        kind = rs.get("type", rs.get("rope_type"))
        if kind != "yarn":
            errors.append(f"rope_scaling.type must be 'yarn' (DeepSeek-V3's scheme), got {kind!r}")
        unknown = sorted(set(rs) - set(YARN_KEYS) - {"rope_type"})
        if unknown:
            errors.append(f"rope_scaling has unknown keys {unknown}; allowed: {list(YARN_KEYS)}")
        for key in ("factor", "original_max_position_embeddings"):
            if key not in rs:
                errors.append(f"rope_scaling needs '{key}'")
        if "factor" in rs and not float(rs["factor"]) >= 1.0:
            errors.append(f"rope_scaling.factor must be >= 1, got {rs['factor']}")
        return errors

    # ------------------------------------------------------------------ derived quantities
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def has_moe(self) -> bool:
        return self.first_k_dense_replace < self.num_hidden_layers

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Layers 0..first_k_dense_replace-1 are dense; the rest (MTP blocks included) are MoE, as in DeepSeek-V3."""
        return layer_idx >= self.first_k_dense_replace and self.n_routed_experts > 0

    @property
    def yarn(self) -> dict[str, Any] | None:
        """rope_scaling with DeepSeek-V3's defaults filled in, or None when RoPE is unscaled."""
        if self.rope_scaling is None:
            return None
        rs = {"beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.0}
        rs.update({k: v for k, v in self.rope_scaling.items() if k not in ("type", "rope_type")})
        return rs

    @property
    def softmax_scale(self) -> float:
        """1/sqrt(d_qk), times mscale(factor, mscale_all_dim)**2 under YaRN (DeepSeek-V3 and HF DeepseekV3Attention)."""
        scale = self.qk_head_dim**-0.5
        yarn = self.yarn
        if yarn is not None and yarn["mscale_all_dim"]:
            m = yarn_mscale(float(yarn["factor"]), float(yarn["mscale_all_dim"]))
            scale = scale * m * m
        return scale

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> tuple[ModelConfig, list[str]]:
        """Our config from a transformers `config.json` of the DeepseekV3ForCausalLM architecture (DeepSeek-V3/R1,
        Kimi K2, Moonlight...), read through the same mapping as `vernacular import hf`. Fields that do not change the
        architecture (quantization, dtype, token ids, auto_map...) are ignored; returns (config, ignored field names).
        Raises ValueError for another architecture or an unsupported variant."""
        from vernacular.interop.hf import config_from_hf

        archs = hf.get("architectures") or []
        if archs and "DeepseekV3ForCausalLM" not in archs:
            raise ValueError(f"architectures {archs} are not DeepseekV3ForCausalLM; Vernacular builds DeepSeek-V3-style "
                             "models (the planner also reads dense configs: `vernacular plan --config`)")
        read: set[str] = set()

        class _Tracking(dict):
            def __getitem__(self, key):
                read.add(key)
                return super().__getitem__(key)

            def get(self, key, default=None):
                read.add(key)
                return super().get(key, default)

        # the model_type of a DeepseekV3ForCausalLM folder may be another name (kimi_k2); quantization is a storage
        # detail for everything but loading weights
        view = _Tracking({k: v for k, v in hf.items() if k != "quantization_config"} | {"model_type": "deepseek_v3"})
        config, _ = config_from_hf(view)
        ignored = sorted((set(hf) - read - {"architectures", "model_type"}) | ({"quantization_config"} & set(hf)))
        return config, ignored

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if path.is_dir() and (path / "config.json").is_file():
            path = path / "config.json"  # a transformers model folder
        if not path.is_file():
            raise FileNotFoundError(f"model config file not found: {path}")
        if path.suffix == ".toml":
            with path.open("rb") as f:
                d = tomllib.load(f)
        elif path.suffix == ".json":
            d = json.loads(path.read_text(encoding="utf-8"))
        else:
            raise ValueError(f"model config must be a .toml or .json file, got {path}")
        d = d.get("model", d) if isinstance(d.get("model"), dict) else d  # allow a [model] table
        if "architectures" in d or "model_type" in d:  # a transformers config.json
            config, ignored = cls.from_hf(d)
            if ignored:
                import sys

                print(f"note: {path}: ignored fields that do not change the architecture: {', '.join(ignored)}",
                      file=sys.stderr)
            return config
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e

    @staticmethod
    def presets() -> list[str]:
        return sorted(p.name[: -len(".toml")] for p in _preset_dir().iterdir() if p.name.endswith(".toml"))

    @classmethod
    def load(cls, spec: str | Path | dict | ModelConfig, **overrides: Any) -> ModelConfig:
        """A preset name, a .toml/.json path, a dict or a ModelConfig (copied); keyword overrides are applied last."""
        if isinstance(spec, ModelConfig):
            cfg = spec.to_dict()
        elif isinstance(spec, dict):
            cfg = dict(spec)
        elif isinstance(spec, (str, Path)):
            path = Path(spec)
            if path.suffix in (".toml", ".json") or path.exists():
                cfg = cls.from_file(path).to_dict()
            elif str(spec) in cls.presets():
                cfg = cls.from_file(_preset_dir() / f"{spec}.toml").to_dict()
            else:
                raise ValueError(f"unknown model preset or missing file {str(spec)!r}; presets: {cls.presets()}")
        else:
            raise TypeError(f"cannot load a ModelConfig from {type(spec).__name__}")
        cfg.update(overrides)
        return cls.from_dict(cfg)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _preset_dir() -> Path:
    return Path(str(resources.files("vernacular") / "configs"))


__all__ = ["ModelConfig", "yarn_mscale"]
