"""funcattr.allocator: after the opt-in warm-up, medium-sized CPU buffers come from the heap;
``functionalize`` leaves the process's allocator alone."""

import ctypes
import subprocess
import sys
import textwrap

import pytest

_PROBE = textwrap.dedent("""
    import ctypes
    import torch

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2

    def mapped_while_alive(nbytes):
        before = libc.mallinfo2().hblkhd
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        mapped = libc.mallinfo2().hblkhd - before
        del buffer
        return mapped

    # a fresh process maps a 4 MiB block (and then raises its threshold to 4 MiB) ...
    cold = mapped_while_alive(4 << 20) >= 4 << 20
    {warm}
    # ... and an 8 MiB block (a conv activation of a chunk of small images) after that
    print(cold, mapped_while_alive(8 << 20) == 0)
""")


def _glibc() -> bool:
    return sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "mallinfo2")


@pytest.mark.skipif(not _glibc(), reason="the mmap threshold is glibc's (Linux, glibc >= 2.33)")
@pytest.mark.parametrize("warm, expected", [
    ("from funcattr.allocator import warm_allocator; warm_allocator(); warm_allocator()",
     "True True"),
    ("import torch.nn; from funcattr import functionalize; functionalize(torch.nn.ReLU())",
     "True False"),
    ("pass", "True False"),
], ids=["warm-allocator", "functionalize-has-no-side-effect", "control"])
def test_warm_allocator_serves_medium_buffers_from_the_heap(warm, expected):
    """Without warming, an 8 MiB tensor is a fresh mmap (faulted in page by page); after the
    opt-in ``warm_allocator()`` it comes from the heap. ``functionalize`` does not change the
    process's allocator; the control shows the probe can tell."""
    probe = _PROBE.replace("{warm}", warm)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    cold, from_heap = result.stdout.split()[-2:]
    if cold != "True":
        pytest.skip("glibc's mmap threshold was already above 4 MiB after importing torch")
    assert f"{cold} {from_heap}" == expected
