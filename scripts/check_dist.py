"""Build flamepy's sdist and wheel, check them, and prove the wheel works on its own.

CI runs this (scripts/test.sh). It:

1. builds both distributions with ``python -m build`` (in an isolated environment, as a release would);
2. runs ``twine check`` on them (metadata and README render as PyPI would);
3. checks their contents: the ``.proto`` files, ``py.typed`` markers, the conformance suite and its
   pytest plugin entry point, the console scripts, the bundled plugins' entry points, the license;
4. for each interpreter chosen (the oldest and newest Python >= 3.10 the machine has, so one CI run
   covers the supported range), makes a fresh virtualenv outside the repository, installs the wheel
   with its ``conformance`` extra, and runs ``flmctl --version`` and ``flamepy-conformance --transport
   inmem`` from there: nothing of the source tree is importable, so the wheel alone must carry it all.

``--python PATH`` (repeatable) chooses the interpreters; by default they are found among pyenv's
versions and ``python3.X`` on PATH, else this interpreter is used. Exit status 0 when everything holds.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MIN_PYTHON = (3, 10)

WHEEL_MUST_HOLD = (
    "flamepy/py.typed",
    "flamepy_core/py.typed",
    "flamepy_core/wire/proto/types.proto",
    "flamepy_core/wire/proto/frontend.proto",
    "flamepy_core/wire/proto/shim.proto",
    "flamepy_core/wire/proto/ext.proto",
    "flamepy_core/wire/proto/cache.proto",
    "flamepy_conformance/py.typed",
    "flamepy_conformance/pytest_plugin.py",
    "flamepy_conformance/command.py",
    "flamepy_transports/zmq/plugin.py",
    "flamepy_serializers/cloudpickle/plugin.py",
)
ENTRY_POINTS_MUST_HOLD = (
    "[console_scripts]",
    "flmctl = flamepy_core.cli.main:main",
    "flamepy-conformance = flamepy_conformance.command:main",
    "[flamepy.transports]",
    "zmq = flamepy_transports.zmq.plugin",
    "[flamepy.serializers]",
    "cloudpickle = flamepy_serializers.cloudpickle.plugin",
    "[pytest11]",
    "flamepy_conformance = flamepy_conformance.pytest_plugin",
)
SDIST_MUST_HOLD = ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "flamepy_core/wire/proto/types.proto")


def run(argv: list[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    started = time.monotonic()
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    print(f"+ {' '.join(str(a) for a in argv)}  ({time.monotonic() - started:.1f} s)", flush=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"check_dist: {argv[0]} {argv[1] if len(argv) > 1 else ''} failed ({proc.returncode})")
    return proc.stdout


def version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys, venv; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def candidate_pythons() -> list[str]:
    """Interpreters this machine has: pyenv's versions, ``python3.X`` on PATH, and this one."""
    found = [sys.executable]
    pyenv = shutil.which("pyenv")
    if pyenv:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30).stdout.strip()
        for binary in sorted(Path(root, "versions").glob("*/bin/python3.*")):
            if re.fullmatch(r"python3\.\d+", binary.name):
                found.append(str(binary))
    for minor in range(MIN_PYTHON[1], 20):
        on_path = shutil.which(f"python3.{minor}")
        if on_path:
            found.append(on_path)
    return found


def oldest_and_newest() -> list[str]:
    by_version: dict[tuple[int, int], str] = {}
    for python in candidate_pythons():
        version = version_of(python)
        if version is not None and version >= MIN_PYTHON:
            by_version.setdefault(version, python)
    chosen = sorted(by_version)
    picks = [chosen[0], chosen[-1]] if chosen else []
    return list(dict.fromkeys(by_version[v] for v in picks)) or [sys.executable]


def build(out: Path) -> tuple[Path, Path]:
    run([sys.executable, "-m", "build", "--outdir", out, REPO])
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, f"expected one wheel and one sdist in {out}: {list(out.iterdir())}"
    run([sys.executable, "-m", "twine", "check", "--strict", wheels[0], sdists[0]])
    return wheels[0], sdists[0]


def check_contents(wheel: Path, sdist: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        missing = [name for name in WHEEL_MUST_HOLD if name not in names]
        assert not missing, f"{wheel.name} lacks {missing}"
        assert not any(n.startswith(("tests/", "examples/", "benchmarks/")) for n in names), "tests leaked in"
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        absent = [line for line in ENTRY_POINTS_MUST_HOLD if line not in entry_points]
        assert not absent, f"{wheel.name}'s entry points lack {absent}"
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), f"{wheel.name} carries no LICENSE"
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert "License-Expression: Apache-2.0" in metadata, "the license expression is missing from METADATA"
    with tarfile.open(sdist) as tf:
        top = tf.getnames()[0].split("/")[0]
        names = {n.removeprefix(top + "/") for n in tf.getnames()}
        missing = [name for name in SDIST_MUST_HOLD if name not in names]
        assert not missing, f"{sdist.name} lacks {missing}"
    print(f"check_dist: {wheel.name} and {sdist.name} hold what they must", flush=True)


def try_wheel(wheel: Path, python: str, scratch: Path) -> None:
    """A fresh virtualenv with only the wheel (and its dependencies), used from outside the repository."""
    venv = scratch / f"venv-{Path(python).name}"
    # No pip inside (ensurepip is slow): this interpreter's pip installs into the venv with --python.
    run([python, "-m", "venv", "--without-pip", venv])
    bin_dir = venv / "bin"
    run([sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "--quiet", f"{wheel}[conformance]"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLAME_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["FLAME_HOME"] = str(scratch / f"home-{Path(python).name}")
    where = run([bin_dir / "python", "-c", "import flamepy; print(flamepy.__file__)"], cwd=scratch, env=env).strip()
    assert where.startswith(str(venv)), f"flamepy was imported from {where}, not from the wheel in {venv}"
    version = run([bin_dir / "flmctl", "--version"], cwd=scratch, env=env)
    wheel_version = wheel.name.split("-")[1]
    assert version.startswith(f"flmctl {wheel_version} "), (
        f"flmctl --version says {version!r}, the wheel is {wheel_version}"
    )
    report = run([bin_dir / "flamepy-conformance", "--transport", "inmem"], cwd=scratch, env=env)
    summary = next((line.strip() for line in report.splitlines() if " passed, " in line), "no summary line")
    print(f"check_dist: the wheel works alone on {version.strip()}: conformance inmem {summary}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", help="an interpreter to try the wheel with (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (printed) for a look")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="flamepy-dist-"))
    try:
        wheel, sdist = build(scratch / "dist")
        check_contents(wheel, sdist)
        pythons = args.python or oldest_and_newest()
        with ThreadPoolExecutor(max_workers=len(pythons)) as pool:  # mostly waiting on pip: overlap them
            for done in [pool.submit(try_wheel, wheel, python, scratch) for python in pythons]:
                done.result()
    finally:
        if args.keep:
            print(f"check_dist: kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
