"""fastreg._allocator: a command-line process reuses the memory it frees (no page faults for
tensors allocated again and again), and FASTREG_MALLOC chooses."""
import os
import subprocess
import sys

import pytest

from fastreg import _allocator

# 40 MiB tensors, above glibc's largest mmap threshold (32 MiB): by default every one of them
# is fresh pages from the kernel, one minor fault per 4 KiB page touched.
LOOP = """
import resource, sys, torch
from fastreg import _allocator
took = _allocator.keep_freed_memory()
x = torch.empty(10 << 20).fill_(1.0)
del x
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = torch.empty(10 << 20).fill_(1.0)
    del x
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def faults(choice: str) -> tuple[bool, int]:
    env = {**os.environ, "FASTREG_MALLOC": choice}
    out = subprocess.run([sys.executable, "-c", LOOP], env=env, capture_output=True, text=True, check=True)
    took, count = out.stdout.split()
    return took == "True", int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults():
    took, kept = faults("keep")
    skipped, system = faults("system")
    assert took and not skipped
    assert system > 10 * 2560 * 0.8  # about one fault per page of every 40 MiB tensor
    assert kept < system / 5  # about a tenth here (102,410 -> 10,240)


def test_the_choice_is_checked(monkeypatch):
    monkeypatch.setenv("FASTREG_MALLOC", "jemalloc")
    with pytest.raises(ValueError, match="FASTREG_MALLOC: expected one of"):
        _allocator.keep_freed_memory()
    monkeypatch.setenv("FASTREG_MALLOC", "system")
    assert _allocator.keep_freed_memory() is False
