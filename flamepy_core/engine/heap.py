"""How the server's C heap treats large buffers: kept mapped between tasks, not given back and faulted in anew.

Why: a 16 MiB payload passes through the server in buffers of that size (the request as received, the
answer as sent). glibc's ``malloc`` gives such a buffer its own ``mmap`` and unmaps it when it is freed,
so the next task's buffer is fresh memory again, and every one of its 4,096 pages is faulted in while it
is first written (zeroed by the kernel, charged to the memory cgroup, mapped). Measured with ``perf`` on
this project's 2-core virtual machines, over 16 MiB invokes: a third of the server's CPU went to those
faults (``exc_page_fault`` under ``memmove``), 4,096 to 8,192 of them per invoke. With the three settings
below the server faults in none once warm, and its CPU per 16 MiB invoke drops by a quarter.

The settings (``mallopt``, before the server starts its threads):

* ``M_MMAP_THRESHOLD`` 32 MiB (glibc's largest): blocks up to that size come from the heap, whose freed
  memory stays mapped for the next one;
* ``M_TRIM_THRESHOLD`` ``KEPT_FREE_BYTES``: at most that much free memory is kept at the top of the heap;
  what lies beyond is given back, so a burst of large payloads does not hold memory for ever;
* ``M_ARENA_MAX`` 1: every thread allocates from the one heap, so a buffer freed by one thread is reused
  by the next, whichever receives the next task (one heap per thread would each keep their own).

Only where the C library is glibc: elsewhere nothing is changed. Nothing is changed either when the user
set glibc's malloc tunables for the server (``GLIBC_TUNABLES`` naming ``glibc.malloc``, or the older
``MALLOC_*_`` variables): theirs win. Only the server's process does this: a client library must not
change the heap of the program that imports it, and a service's process runs the user's code.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Mapping

__all__ = ["KEPT_FREE_BYTES", "keep_large_buffers"]

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
"""``mallopt`` parameters, as glibc's ``malloc.h`` numbers them."""
MMAP_THRESHOLD_BYTES = 32 << 20
"""glibc's largest ``M_MMAP_THRESHOLD`` on 64-bit machines (half its heap size): larger ones are refused."""
KEPT_FREE_BYTES = 256 << 20
"""Free memory the heap keeps mapped at its top, for the next large buffers (glibc's default: 128 KiB,
raised by glibc itself to twice the largest buffer freed, 64 MiB at most)."""
_USER_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_large_buffers(environ: Mapping[str, str] = os.environ) -> bool:
    """Apply the settings of this module's docstring to this process's heap; whether they were applied.

    Call it first thing in the server's process, before its threads start (an arena made before keeps
    its own heap).
    """
    if not sys.platform.startswith("linux"):
        return False
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", "") or any(name in environ for name in _USER_SETTINGS):
        log.debug("the heap keeps the user's malloc settings")
        return False
    try:
        libc = ctypes.CDLL(None)
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only: musl and others have no such call
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    gnu_get_libc_version.restype = ctypes.c_char_p
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, KEPT_FREE_BYTES))
    applied = all(mallopt(parameter, value) == 1 for parameter, value in settings)  # 1 = accepted
    log.debug("glibc %s heap settings for large buffers applied: %s", gnu_get_libc_version().decode(), applied)
    return applied
