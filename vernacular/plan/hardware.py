"""Accelerators the planner knows: dense peaks, memory, power. One table, also used for MFU on known GPUs.

Peaks are dense (no 2:4 sparsity) tensor-core FLOP/s from the vendors' data sheets (SXM / OAM parts):
NVIDIA H100 SXM and H800 SXM (same compute, H800 with 400 GB/s NVLink), H200 SXM, B200 (HGX, 1000 W), GH200
(the Hopper GPU of the superchip; memory is its HBM3, power the module cap as Alps and JUPITER run it), AMD MI300X.
`power_w` is the board/module power the planner assumes while training (its TDP: a stated upper-bound assumption).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Accelerator:
    name: str
    bf16_tflops: float  # dense
    fp8_tflops: float  # dense
    memory_gb: float  # HBM, 10^9 bytes
    power_w: float
    gpus_per_node: int = 8
    intra_node_gbps: float = 900.0  # GB/s per GPU (NVLink / Infinity Fabric)
    inter_node_gbps: float = 50.0  # GB/s per GPU (400 Gb/s NIC per GPU)

    def peak_flops(self, dtype: str = "bf16") -> float:
        if dtype not in ("bf16", "fp8"):
            raise ValueError(f"dtype must be bf16 or fp8, got {dtype!r}")
        return (self.bf16_tflops if dtype == "bf16" else self.fp8_tflops) * 1e12

    def to_dict(self) -> dict:
        return asdict(self)


ACCELERATORS: dict[str, Accelerator] = {a.name: a for a in (
    Accelerator("H100", 989.4, 1978.9, 80, 700),
    Accelerator("H200", 989.4, 1978.9, 141, 700),
    Accelerator("H800", 989.4, 1978.9, 80, 700, intra_node_gbps=400.0),
    Accelerator("B200", 2250.0, 4500.0, 180, 1000, intra_node_gbps=1800.0),
    Accelerator("GH200", 989.4, 1978.9, 96, 680, gpus_per_node=4, intra_node_gbps=900.0, inter_node_gbps=25.0),
    Accelerator("MI300X", 1307.4, 2614.9, 192, 750, intra_node_gbps=448.0),
    # not in the planner's headline table, kept for MFU on the GPUs people train small models on
    Accelerator("A100", 312.0, 312.0, 80, 400, intra_node_gbps=600.0),
    Accelerator("L40S", 362.0, 733.0, 48, 350, intra_node_gbps=32.0),
    Accelerator("L4", 121.0, 242.0, 24, 72, intra_node_gbps=32.0),
)}

PLANNER_TABLE = ("H100", "H200", "H800", "B200", "GH200", "MI300X")

# MFU we measured ourselves (BENCHMARKS.md, benchmarks/mfu_gpu.py), by accelerator: the planner's default where
# present. Empty until a GPU run is recorded; the planner then states its assumption instead.
MEASURED_MFU: dict[str, tuple[float, str]] = {}
ASSUMED_MFU = 0.40  # a typical well-tuned bf16 large-scale run (DeepSeek-V3's figures imply 30-45%, see docs/plan.md)


def accelerator(name: str) -> Accelerator:
    """Look up by name (case-insensitive; 'H100 80GB HBM3' as torch.cuda.get_device_name prints it also matches)."""
    key = name.strip().upper()
    if key in ACCELERATORS:
        return ACCELERATORS[key]
    for known in sorted(ACCELERATORS, key=len, reverse=True):  # GH200 before H200
        if known in key.replace(" ", ""):
            return ACCELERATORS[known]
    raise ValueError(f"unknown accelerator {name!r}; known: {', '.join(ACCELERATORS)} "
                     "(or give --peak-tflops, --memory-gb and --power-w for a custom one)")


def custom(name: str, bf16_tflops: float, memory_gb: float, power_w: float, gpus_per_node: int = 8) -> Accelerator:
    if min(bf16_tflops, memory_gb, power_w) <= 0:
        raise ValueError("a custom accelerator needs positive --peak-tflops, --memory-gb and --power-w")
    return Accelerator(name, bf16_tflops, 2 * bf16_tflops, memory_gb, power_w, gpus_per_node=gpus_per_node)
