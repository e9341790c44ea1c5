"""The README's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys

from .conftest import ROOT


def test_readme_python_blocks_run(tmp_path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    for i, code in enumerate(blocks):
        code = code.replace("/tmp/tiny.gguf", str(tmp_path / f"tiny{i}.gguf"))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, f"README block {i} failed:\n{out.stderr}"
