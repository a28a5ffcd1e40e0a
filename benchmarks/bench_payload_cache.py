"""CPU per 16 MiB payload file written and read back, with its pages kept in the page cache or let go of.

Why this exists: on a 2-core virtual machine the 16 MiB row of ``bench_invoke.py`` went from 55 ms to
130 ms per invoke after about ten invokes, with no code change in between. Each invoke writes two
payload files (input and output) that nobody reads again; kept in the page cache, they make it grow by
32 MiB per invoke, and once the memory the guest recently freed is used up, every new page is one the
host backs only when it is first touched (about 10 us each). This measures that alone, without a
server: ``--files`` files of ``--size-mib`` written in 1 MiB ``write(2)`` calls and read back once, kept
in one folder,

* ``kept``: as the server did before: written, read, left cached;
* ``dropped``: as it does now (``wire.payload_handoff``): the writer starts the writeback at once, the
  reader lets go of the clean pages, and each file is let go of again two files later.

It prints the CPU time (user + system) of each file's write and read, in ms, and the page cache's growth.
Usage: ``python benchmarks/bench_payload_cache.py [--files 40] [--size-mib 16] [--dir DIR]``. Linux.
Nothing is asserted: this is a measurement, and the step appears only on machines whose memory is
backed lazily (a bare-metal machine shows a flat ``kept`` row).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from flamepy_core.wire.payload_handoff import drop_cached, read_payload_file, write_payload_file


def cached_mib() -> int:
    """The page cache's size (``Cached`` in ``/proc/meminfo``), MiB."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Cached:"):
                return int(line.split()[1]) // 1024
    return -1


def write_kept(path: Path, data: bytes) -> None:
    """The write as it was: 1 MiB per write(2), nothing else."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[: 1 << 20]) :]
    finally:
        os.close(fd)


def run(mode: str, folder: Path, files: int, data: bytes) -> tuple[list[float], int]:
    before = cached_mib()
    cpu = []
    for i in range(files):
        path = folder / f"{mode}-{i}"
        start = time.process_time()
        if mode == "kept":
            write_kept(path, data)
            path.read_bytes()
        else:
            write_payload_file(path, data, sync=False)
            read_payload_file(path, len(data))
            if i >= 2:
                drop_cached(folder / f"{mode}-{i - 2}")
        cpu.append((time.process_time() - start) * 1e3)
    return cpu, cached_mib() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--dir", default=None, help="where to write (default: the system's temporary folder)")
    args = parser.parse_args()
    data = os.urandom(args.size_mib << 20)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for mode in ("kept", "dropped"):
        folder = Path(tempfile.mkdtemp(prefix="fpc-", dir=args.dir))
        try:
            cpu, growth = run(mode, folder, args.files, data)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        half = len(cpu) // 2
        print(
            f"{mode:<8} CPU ms per file: first half median {statistics.median(cpu[:half]):.1f}, "
            f"second half median {statistics.median(cpu[half:]):.1f}; page cache +{growth} MiB"
        )
        print("         each: " + " ".join(f"{c:.0f}" for c in cpu))


if __name__ == "__main__":
    main()
