"""The generated declarations are fresh, and their struct layouts match the C compiler's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cortex_llama._cdef import LLAMA_CPP_COMMIT
from cortex_llama._lib import ffi

from .conftest import ROOT, VENDOR, have_cc

pytestmark = pytest.mark.skipif(have_cc() is None, reason="no C compiler")

# Structs passed by value or read by field; every other complete struct is probed too.
REQUIRED = [
    "llama_model_params", "llama_context_params", "llama_batch", "llama_sampler_chain_params",
    "llama_token_data", "llama_token_data_array", "llama_chat_message",
    "llama_model_quantize_params", "llama_perf_context_data", "llama_logit_bias",
    "llama_perf_sampler_data", "llama_model_kv_override", "llama_sampler_i", "llama_sampler",
    "ggml_backend_dev_props", "ggml_backend_dev_caps",
    # libmtmd (mtmd.h, mtmd-helper.h)
    "mtmd_context_params", "mtmd_input_text", "mtmd_input_part", "mtmd_decoder_pos",
    "mtmd_helper_bitmap_wrapper", "mtmd_helper_init_opt", "mtmd_helper_video_init_params",
    "mtmd_helper_embd_batch",
]


def _complete_structs() -> list[str]:
    names = []
    for name in ffi.list_types()[1]:
        try:
            ffi.sizeof(f"struct {name}")
        except ValueError:
            continue  # opaque
        names.append(name)
    return sorted(names)


def test_headers_are_vendored() -> None:
    assert (VENDOR / "include" / "llama.h").is_file(), "run python scripts/fetch_llama_cpp.py"


def test_required_structs_are_declared() -> None:
    declared = set(_complete_structs())
    assert set(REQUIRED) <= declared, set(REQUIRED) - declared


def test_declarations_are_not_stale() -> None:
    """Regenerating from the vendored headers reproduces the committed _cdef.py."""
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cdef.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout


def test_commit_of_declarations_is_the_pin() -> None:
    assert LLAMA_CPP_COMMIT == (ROOT / "LLAMA_CPP_COMMIT").read_text().strip()


def test_struct_layouts_match_the_compiler(tmp_path) -> None:
    """A C probe prints sizeof/offsetof of every complete struct (our shims'
    included); cffi must agree."""
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "llama.h"',
             '#include "ggml-backend.h"', '#include "mtmd-helper.h"', '#include "cortex_spec.h"',
             "int main(void) {"]
    expected: dict[str, int] = {}
    for name in _complete_structs():
        ctype = ffi.typeof(f"struct {name}")
        lines.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
        expected[name] = ffi.sizeof(ctype)
        for field, info in ctype.fields:
            if not field:
                continue
            key = f"{name}.{field}"
            lines.append(f'printf("{key} %zu\\n", offsetof(struct {name}, {field}));')
            expected[key] = info.offset
    lines += ["return 0;", "}"]
    src = tmp_path / "probe.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "probe"
    cc = have_cc()
    subprocess.run([cc, "-std=c11", "-I", str(VENDOR / "include"), "-I",
                    str(VENDOR / "ggml" / "include"), "-I", str(VENDOR / "tools" / "mtmd"),
                    "-I", str(ROOT / "csrc"), str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    actual = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
    assert len(actual) == len(expected) > 100
    mismatches = {k: (expected[k], actual[k]) for k in expected if expected[k] != actual[k]}
    assert not mismatches, f"cffi vs C (cffi, C): {mismatches}"
