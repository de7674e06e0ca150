"""Device and precision selection, and the peak FLOP/s that MFU is measured against."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets; fp32 is plain (non-TF32) FMA.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "B200": {"bf16": 2250.0, "fp16": 2250.0, "fp32": 80.0},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "4090": {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6},
}


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises AMX-BF16 (the only CPUs where bf16 matmul beats fp32)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def cpu_l2_bytes() -> int:
    """One core's L2 cache in bytes, as Linux reports it (1 MiB where it does not)."""
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip()
                return int(size.rstrip("KM")) * {"K": 1024, "M": 1024**2}.get(size[-1], 1)
        except (OSError, ValueError):
            break
    return 1024**2


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 on GPUs (and CPUs) with native bf16, fp16 on older GPUs, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype for a precision name, or None for fp32."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def gpu_peak_flops(name: str, precision: str) -> float | None:
    """Datasheet peak FLOP/s for a GPU name such as 'NVIDIA H100 80GB HBM3'."""
    for key, table in GPU_PEAK_TFLOPS.items():
        if key in name.upper():
            return table[precision] * 1e12
    return None


def cpu_matmul_peak(
    cache_dir: Path | None = None, *, size: int = 1024, seconds: float = 0.5, fresh: bool = False, trials: int = 5
) -> float:
    """Measured float32 matmul FLOP/s of this CPU at the current thread count (cached on disk).

    The best of `trials` short timings: a trial that shared the CPU with another process reads
    low, and a low peak would overstate MFU (above 100%) for as long as it stayed cached. A
    cached value is only ever replaced by a higher one; `fresh` measures even when one exists.
    """
    key = f"{platform.processor() or platform.machine()}|{torch.get_num_threads()}|{torch.__version__}|{size}"
    path = (cache_dir or Path.home() / ".cache" / "lmlab") / "cpu_peak.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if key in cached and not fresh:
        return float(cached[key])
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / trials:
            a @ b
            n += 1
        best = max(best, 2 * size**3 * n / (time.perf_counter() - t0))
    peak = max(best, float(cached.get(key, 0.0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**cached, key: peak}))
    return peak


def peak_flops(device: torch.device, precision: str, *, override: float | None = None) -> float | None:
    """Peak FLOP/s to compute MFU against: an override, the GPU table, or the measured CPU peak."""
    if override:
        return override
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), precision)
    if device.type == "cpu":
        return cpu_matmul_peak()
    return None


def missing_compiler(device_type: str) -> str | None:
    """Why torch.compile cannot run on this device type, or None: on CUDA its kernels are Triton's."""
    import importlib.util

    if device_type == "cuda" and importlib.util.find_spec("triton") is None:
        return 'torch.compile on CUDA needs Triton; install it with: pip install "lmlab[fast]"'
    return None
