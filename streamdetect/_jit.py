"""numba compilation as the package's kernels use it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled by numba, its machine code cached on disk beside its module (or in
    ``NUMBA_CACHE_DIR``) so that later processes load it in a fraction of a second; where no cache
    directory is writable (a read-only install), compiled afresh in every process instead."""
    try:
        return numba.njit(cache=True)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(fn)
