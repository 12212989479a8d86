"""How the loudness graphs cut a track's samples: the K-weighting filter in state-space form, and the blocks
of samples it is run over (``frontend_graphs`` builds the graphs; ``analysis.native_audio`` lays a track's
channels out the same way). Kept apart from the graphs so that the decoding workers, which lay the samples
out, need not import what builds graphs."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from jamcaps_desktop.audio.loudness import k_weighting, step_samples


def section_state_space(numerator: np.ndarray, denominator: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A, B, C, D of one second-order section b(z)/a(z) in controller canonical form (what SciPy's
    ``tf2ss`` gives; written out here because importing ``scipy.signal`` took a job half a second to
    a second and a half, on the path to its first measured track)."""
    b = np.asarray(numerator, dtype=np.float64) / denominator[0]
    a = np.asarray(denominator, dtype=np.float64) / denominator[0]
    matrix = np.array([[-a[1], -a[2]], [1.0, 0.0]])
    feed = np.array([[1.0], [0.0]])
    out = np.array([[b[1] - b[0] * a[1], b[2] - b[0] * a[2]]])
    return matrix, feed, out, np.array([[b[0]]])


def state_space(sos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A, B, C, D of a cascade of second-order sections (float64)."""
    a_total: np.ndarray | None = None
    b_total = c_total = None
    d_total = 1.0
    for section in sos:
        a, b, c, d = section_state_space(section[:3], section[3:])
        d = float(d[0, 0])
        if a_total is None:
            a_total, b_total, c_total, d_total = a, b, c, d
            continue
        # the next section is driven by the output so far: y1 = C1 x1 + D1 u
        size1, size2 = a_total.shape[0], a.shape[0]
        combined = np.zeros((size1 + size2, size1 + size2))
        combined[:size1, :size1] = a_total
        combined[size1:, :size1] = b @ c_total
        combined[size1:, size1:] = a
        b_total = np.vstack([b_total, b * d_total])
        c_total = np.hstack([d * c_total, c])
        a_total, d_total = combined, d * d_total
    return a_total, b_total, c_total, d_total


@dataclass(frozen=True)
class BlockPlan:
    """How a rate's samples are cut for the loudness graph: blocks of ``block`` samples, ``per_step`` of them
    in a 100 ms step, each output block needing ``context`` blocks before it (the filter's memory)."""

    rate: int
    step: int
    block: int
    per_step: int
    context: int


@functools.lru_cache(maxsize=16)
def block_plan(rate: int) -> BlockPlan:
    step = step_samples(rate)
    divisors = [d for d in range(1, 65) if step % d == 0]
    per_step = min(divisors, key=lambda d: abs(step // d - 480))
    block = step // per_step
    a, _b, _c, _d = state_space(k_weighting(rate))
    decay = float(np.max(np.abs(np.linalg.eigvals(a)))) ** block  # how much of the state a block leaves
    context = int(np.clip(np.ceil(np.log(1e-10) / np.log(max(decay, 1e-300))) + 2, 2, 256))
    return BlockPlan(rate, step, block, per_step, context)


def separation(plan: BlockPlan) -> int:
    """Blocks of silence between two channels: whole steps, at least the filter's memory."""
    return -(-plan.context // plan.per_step) * plan.per_step
