"""Triton, when installed (only the CUDA decode path needs it): ``triton`` and ``tl``, or None."""

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = tl = None

__all__ = ["tl", "triton"]
