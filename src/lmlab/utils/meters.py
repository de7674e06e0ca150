"""Running averages and throughput, as the trainer reports them."""

from __future__ import annotations

import time
from collections import deque


class AverageMeter:
    """Mean of everything seen, and of the last `window` values."""

    def __init__(self, window: int = 20) -> None:
        self.total, self.count = 0.0, 0
        self.recent: deque[float] = deque(maxlen=window)

    def update(self, value: float, n: int = 1) -> None:
        """Add `value` (weight n)."""
        self.total += value * n
        self.count += n
        self.recent.append(value)

    @property
    def mean(self) -> float:
        """Mean over all updates."""
        return self.total / max(1, self.count)

    @property
    def recent_mean(self) -> float:
        """Mean over the last `window` updates."""
        return sum(self.recent) / max(1, len(self.recent))


class ThroughputMeter:
    """Tokens/s, step time and data-wait time over a sliding window of steps."""

    def __init__(self, window: int = 20) -> None:
        self.steps: deque[tuple[int, float, float]] = deque(maxlen=window)
        self.start = time.perf_counter()
        self.tokens = 0

    def update(self, tokens: int, step_time: float, data_wait: float = 0.0) -> None:
        """Record one optimizer step."""
        self.steps.append((tokens, step_time, data_wait))
        self.tokens += tokens

    @property
    def tokens_per_s(self) -> float:
        """Windowed tokens per second."""
        t = sum(s[1] for s in self.steps)
        return sum(s[0] for s in self.steps) / t if t else 0.0

    @property
    def step_time(self) -> float:
        """Windowed mean seconds per step."""
        return sum(s[1] for s in self.steps) / max(1, len(self.steps))

    @property
    def data_wait_fraction(self) -> float:
        """Share of step time spent waiting for data."""
        t = sum(s[1] for s in self.steps)
        return sum(s[2] for s in self.steps) / t if t else 0.0

    @property
    def elapsed(self) -> float:
        """Seconds since the meter was made."""
        return time.perf_counter() - self.start


def peak_memory_bytes(device) -> int | None:
    """Peak allocated accelerator memory, or this process's peak RSS on CPU."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    except (ImportError, OSError):
        return None
