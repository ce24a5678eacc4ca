"""Energy of a training stage, measured with codecarbon while it runs, plus the hardware it ran on.

codecarbon (https://mlco2.github.io/codecarbon/) reads Intel/AMD RAPL counters for CPUs where the kernel exposes them,
NVML for NVIDIA GPUs, and otherwise *estimates* CPU power from its TDP table and the load; RAM is estimated. The record
says which of these it was (`cpu_measurement`, `gpu_measurement`), so the AI Act documents never present an estimate as
a measurement. Offline mode (no network): emissions use the grid carbon intensity of `country_iso_code`
(env `VERNACULAR_ENERGY_COUNTRY`, default DEU), and the factor used is recorded.

The record is `metrics/energy_<stage>.json`; a resumed stage adds to it (segments), so a run killed and resumed
still reports its whole energy. Only the main rank measures (it sees the node's RAPL and NVML devices); with several
nodes the record says how many ranks there were.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import warnings
from pathlib import Path
from typing import Any, Iterator

from vernacular.run import RunDir, read_json, write_json

DEFAULT_COUNTRY = "DEU"


def hardware() -> dict[str, Any]:
    """CPU model, cores, GPUs (names, count) of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus: list[str] = []
    try:
        import torch

        if torch.cuda.is_available():
            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA install must not stop training
        pass
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "gpus": gpus, "gpu_count": len(gpus)}


def _mode(tracker, kind: str) -> str:
    for device in getattr(tracker, "_hardware", []):
        name = type(device).__name__
        if kind == "cpu" and name == "CPU":
            mode = getattr(device, "_mode", "")
            return "measured (RAPL)" if "rapl" in str(mode).lower() else f"estimated (codecarbon {mode}: TDP x load)"
        if kind == "gpu" and name == "GPU":
            return "measured (NVML)"
    return "none" if kind == "gpu" else "estimated"


@contextlib.contextmanager
def measure_energy(run: RunDir, stage: str, enabled: bool = True, world_size: int = 1) -> Iterator[None]:
    """Measure the energy of the enclosed block and append it as a segment to `metrics/energy_<stage>.json`.

    Never fails the training it wraps: if codecarbon cannot start, the record says why (`error`)."""
    if not enabled:
        yield
        return
    country = os.environ.get("VERNACULAR_ENERGY_COUNTRY", DEFAULT_COUNTRY)
    started = dt.datetime.now(dt.timezone.utc)
    tracker, error = None, None
    try:
        from codecarbon import OfflineEmissionsTracker

        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        with warnings.catch_warnings():  # codecarbon 3 deprecates save_to_file=False, which older versions need
            warnings.simplefilter("ignore", DeprecationWarning)
            tracker = OfflineEmissionsTracker(country_iso_code=country, save_to_file=False, log_level="error",
                                              measure_power_secs=15, tracking_mode="machine")
        tracker.start()
    except Exception as e:  # codecarbon missing or no sensor access: record it, train anyway
        tracker, error = None, f"{type(e).__name__}: {e}"
    try:
        yield
    finally:
        segment: dict[str, Any] = {"started": started.isoformat(timespec="seconds"),
                                   "ended": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        if tracker is not None:
            try:
                tracker.stop()
                d = tracker.final_emissions_data
                segment.update({
                    "duration_s": d.duration, "energy_kwh": d.energy_consumed, "cpu_kwh": d.cpu_energy,
                    "gpu_kwh": d.gpu_energy, "ram_kwh": d.ram_energy, "emissions_kg": d.emissions,
                    "cpu_measurement": _mode(tracker, "cpu"), "gpu_measurement": _mode(tracker, "gpu"),
                    "ram_measurement": "estimated", "country_iso_code": d.country_iso_code,
                    "emissions_factor_kg_per_kwh": (d.emissions / d.energy_consumed) if d.energy_consumed else None,
                    "codecarbon_version": d.codecarbon_version,
                })
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
        if error:
            segment["error"] = error
        path = run.energy_record(stage)
        record = read_json(path) if path.exists() else {"stage": stage, "segments": []}
        record["hardware"] = hardware()
        record["world_size"] = world_size
        record["segments"].append(segment)
        done = [s for s in record["segments"] if "energy_kwh" in s]
        record["energy_kwh"] = sum(s["energy_kwh"] for s in done)
        record["emissions_kg"] = sum(s["emissions_kg"] for s in done)
        record["duration_s"] = sum(s["duration_s"] for s in done)
        write_json(path, record)
