"""The package's type hints hold: ``mypy src`` reports no error (configuration in
pyproject.toml's [tool.mypy])."""

from __future__ import annotations

import pytest

from .conftest import ROOT

mypy_api = pytest.importorskip("mypy.api")


def test_mypy_finds_no_errors_in_src() -> None:
    stdout, stderr, rc = mypy_api.run(["--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "src")])
    assert rc == 0, f"mypy src:\n{stdout}{stderr}"
