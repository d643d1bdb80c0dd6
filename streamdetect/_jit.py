"""numba compilation as the package's kernels use it.

numba keys a cached kernel to its own source file only: a kernel that calls one from another
file (``_round_kernel.score_rounds`` calls the feature kernels) or compiles in a constant from
another module (``windows.SKETCH_BITS``, the scaler's and the mixture's clips) would be loaded
stale after that file changed, with wrong results or a crash (numba#8396 proposes tracking such
dependencies; not released). So every kernel's cache stamp here also covers all of
:data:`KERNEL_SOURCES`: a change to any of them recompiles them all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba

#: A directory of kernels compiled ahead (an image's build step) that the process copies into its
#: own ``NUMBA_CACHE_DIR`` before it loads any: numba only uses a cache directory it can write, and
#: a container's writable mount starts empty.
SEED_ENV = "STREAMDETECT_KERNEL_CACHE_SEED"

# The modules whose kernels call each other, and those whose constants the kernels compile in.
KERNEL_SOURCES = (
    "_jit.py", "_feature_kernels.py", "_round_kernel.py", "_window_kernels.py", "_time_kernels.py", "_price_kernels.py",
    "_gpd_kernels.py", "_sorted_kernels.py", "_json_kernels.py", "windows.py", "scaling.py", "model/_em.py",
    "model/_em_kernels.py",
)  # fmt: skip


def _sources_digest() -> bytes:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in KERNEL_SOURCES:
        h.update((here / name).read_bytes())
    return h.digest()


_SOURCES_DIGEST = _sources_digest()


def seed_cache(seed: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None) -> int:
    """Copy the compiled kernels under ``seed`` that ``cache_dir`` lacks into it; the files copied.

    Files already there are kept (they are as new or newer). numba checks each kernel's stamp
    when it loads it, so a seed built from other sources, or for another CPU, is not used: those
    kernels compile as without one. Nothing happens without both directories or when they are the
    same (the build step that fills the seed).
    """
    if not seed or not cache_dir or not os.path.isdir(seed):
        return 0
    src, dst = Path(seed).resolve(), Path(cache_dir).resolve()
    if src == dst:
        return 0
    copied = 0
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            copied += 1
    return copied


# Before any kernel is loaded (the kernel modules import this one first). An unwritable cache
# directory is no error here: numba then compiles in the process, as without a seed.
with contextlib.suppress(OSError):
    seed_cache(os.environ.get(SEED_ENV), getattr(numba.config, "CACHE_DIR", None))


def compiled(fn: Callable[..., Any] | None = None, *, inline: bool = False, nrt: bool = True) -> Any:
    """``fn`` compiled by numba, its machine code cached on disk beside its module (or in
    ``NUMBA_CACHE_DIR``) so that later processes load it in a fraction of a second, under a stamp
    that changes with any of :data:`KERNEL_SOURCES`; where no cache directory is writable (a
    read-only install), compiled afresh in every process instead.

    ``@compiled(inline=True)``: a small helper that numba copies into each kernel calling it
    (``inline="always"``) instead of calling it; in a loop over every byte of a batch the calls
    cost a third of the time (the JSON scanner's whitespace, strings and numbers).

    ``@compiled(nrt=False)``: a kernel that makes no array (numba refuses to compile one that
    does), compiled without numba's runtime, so that the arrays it is given, and the views and
    helpers it passes them to, are not reference counted. Those counts are atomic increments and
    decrements in every helper call and branch that holds an array: three quarters of the JSON
    scanner's time with them (numba#2350 shows the same, 30x on a branchy loop).
    """
    if fn is None:
        return functools.partial(compiled, inline=inline, nrt=nrt)
    options: dict[str, Any] = {"inline": "always"} if inline else {}
    if not nrt:
        options["_nrt"] = False
    try:
        dispatcher = numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(**options)(fn)
    _stamp_with_sources(dispatcher)
    return dispatcher


def _stamp_with_sources(dispatcher: Any) -> None:
    """Make the cache stamp of ``dispatcher`` cover every kernel source, not only its own file.

    The stamp is numba's private ``IndexDataCacheFile._source_stamp`` (checked against the one
    saved in the index when the cache is loaded, written with it when saved); on a numba without
    it the kernel keeps numba's own invalidation.
    """
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if cache_file is not None and hasattr(cache_file, "_source_stamp"):
        cache_file._source_stamp = (cache_file._source_stamp, _SOURCES_DIGEST)
