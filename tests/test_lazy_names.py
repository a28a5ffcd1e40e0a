"""The packages that export names lazily (PEP 562, ``flamepy_core.lazy_names``) keep their promise:
each name is the object of its module, loaded only when read, and a wrong name says which it was."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

LAZY_PACKAGES = [
    "flamepy.core",
    "flamepy.core.service",
    "flamepy.service",
    "flamepy_core.contracts",
    "flamepy_core.kit",
]


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_exported_name_is_its_modules_object_and_listed(package: str) -> None:
    module = importlib.import_module(package)
    where: dict[str, str] = module._WHERE
    for name, home in where.items():
        assert getattr(module, name) is getattr(importlib.import_module(home), name), name
    assert set(where) <= set(dir(module))


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_a_wrong_name_is_an_attribute_error_naming_package_and_name(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match=rf"module '{package}' has no attribute 'NoSuchName'"):
        module.NoSuchName  # noqa: B018


def test_a_name_is_imported_when_first_read_not_before() -> None:
    """In a fresh interpreter: importing ``flamepy.service`` loads neither its client nor its instance
    module; reading ``Session`` loads the client only, and keeps it in the package."""
    probe = (
        "import sys, flamepy.service as s\n"
        "before = {m for m in ('flamepy.service.client', 'flamepy.service.instance') if m in sys.modules}\n"
        "s.Session\n"
        "after = {m for m in ('flamepy.service.client', 'flamepy.service.instance') if m in sys.modules}\n"
        "print(sorted(before), sorted(after), 'Session' in vars(s))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split("\n")[0] == "[] ['flamepy.service.client'] True"
