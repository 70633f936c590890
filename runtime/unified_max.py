"""The unified max value of FlashDecoding++'s asynchronized softmax: which scores it may be used for.

Softmax is shift-invariant: softmax(s) = e^(s - φ) / Σ e^(s - φ) for any φ. With φ fixed ahead of time
(per layer, from calibration), every split of the KV sequence computes Σ e^(s - φ)·v and Σ e^(s - φ) on its
own, and the splits combine by one add and one divide, with no running max and no rescaling.

That is exact as long as e^(s - φ) stays representable where it is used. The kernels multiply e^(s - φ)
with V on the matrix units in the KV dtype, so for a query row whose largest score is m:
  - float16: e^(m - φ) must not overflow 65504 (= e^11.09), and must stay a normal number (>= 2^-14 =
    e^-9.70) so the row's largest weights keep full precision;
  - bfloat16 / float32: an 8-bit exponent (e^±88), the limit is the float32 sum over up to 2^20 keys.
A row whose max leaves [φ + low, φ + high] is recomputed with the synchronized (online-max) scheme.
"""

from __future__ import annotations

# (low, high): the safe offsets of a row's max score from φ, per KV dtype, with margin to the limits above.
SAFE_OFFSETS: dict[str, tuple[float, float]] = {
    "float16": (-9.0, 10.5),
    "bfloat16": (-60.0, 60.0),
    "float32": (-60.0, 60.0),
}


def safe_offsets(dtype: str) -> tuple[float, float]:
    """(low, high) for a bundle dtype name ("float16", ...)."""
    try:
        return SAFE_OFFSETS[dtype]
    except KeyError:
        raise ValueError(f"unified max: no safe range known for dtype {dtype!r}") from None

