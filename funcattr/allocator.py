"""Let the C allocator keep medium-sized tensor buffers instead of returning them to the OS.

glibc's ``malloc`` serves every block above its *mmap threshold* (128 KiB when a process
starts) with fresh pages from ``mmap`` and gives them back with ``munmap`` on ``free``, so each
new buffer of that size is faulted in by the kernel page by page. glibc raises the threshold by
itself, to the size of the largest mapped block freed so far (up to 32 MiB), and from then on
serves smaller blocks from its heap, where freed memory is reused without page faults. A process
that happens to free one large block early runs CPU tensor code much faster than one that
does not; funcattr's batched work (perturbed inputs in chunks, stacked samples) makes buffers of
a few MiB over and over, and on the 2-core test machine a fresh process spent a third of a
pixel-flipping curve's time in page faults (100 000 per run) before this.

:func:`warm_allocator` frees one 31 MiB block once per process, which is what glibc would do
after any such free anyway. It changes no result; with another allocator (macOS, Windows,
jemalloc) it is one unused allocation. It is an explicit opt-in: it changes the allocator of the
whole process, so a library call never does it behind the caller's back. Applications call it
once at start-up (the ``funcattr`` command and the benchmarks do)::

    import funcattr.allocator
    funcattr.allocator.warm_allocator()
"""

from __future__ import annotations

import torch

__all__ = ["warm_allocator"]

#: Just below glibc's largest dynamic mmap threshold (32 MiB on 64-bit systems), so that the
#: freed block, header included, still counts.
_BLOCK_BYTES = 31 << 20

_warmed = False


def warm_allocator() -> None:
    """Free one 31 MiB CPU buffer, once per process (see the module docstring).

    Examples
    --------
    >>> from funcattr.allocator import warm_allocator
    >>> warm_allocator()
    """
    global _warmed
    if not _warmed:
        _warmed = True
        torch.empty(_BLOCK_BYTES, dtype=torch.uint8, device="cpu")
