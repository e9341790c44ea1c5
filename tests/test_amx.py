"""AMX stays out of the build unless asked for (-DCORTEX_LLAMA_AMX=ON).

At the pinned llama.cpp, ggml's AMX kernels die with SIGILL on AMX CPUs
(Sapphire Rapids and newer). These checks work on any x86-64 machine, with or
without AMX: they disassemble code and look for AMX tile instructions.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cortex_llama import _lib
from cortex_llama.system import build_options, cpu_acceleration

from .conftest import VENDOR, source_tree

OBJDUMP = shutil.which("objdump")
CMAKE = shutil.which("cmake")
NINJA = shutil.which("ninja")
TILE_OPS = re.compile(r"\s(tilezero|tileloadd|tileloaddt1|tilestored|ldtilecfg|sttilecfg|tilerelease|"
                      r"tdpbssd|tdpbsud|tdpbusd|tdpbuud|tdpbf16ps|tdpfp16ps)\s")
x86_only = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or OBJDUMP is None,
                              reason="AMX is x86-64 only; needs objdump")


def tile_instructions(binary: Path) -> int:
    out = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", str(binary)], capture_output=True,
                         text=True, check=True).stdout
    return len(TILE_OPS.findall(out))


@x86_only
def test_shipped_cpu_libraries_have_no_amx_instructions() -> None:
    if "CORTEX_LLAMA_AMX" in build_options():
        pytest.skip("this build asked for AMX (-DCORTEX_LLAMA_AMX=ON)")
    libs = sorted(_lib.lib_dir.glob("*ggml-cpu*"))
    assert libs, f"no CPU backend library in {_lib.lib_dir}"
    for lib in libs:
        assert tile_instructions(lib) == 0, f"{lib.name} holds AMX tile instructions"
    acc = cpu_acceleration()
    assert not acc["amx_built"] and not acc["amx_in_use"]


def test_cpu_acceleration_reports_repacking() -> None:
    acc = cpu_acceleration()
    assert set(acc) >= {"amx_cpu", "amx_built", "amx_in_use", "extra_buffer_types", "repack", "features"}
    assert acc["repack"] == ("CPU_REPACK" in acc["extra_buffer_types"])


@x86_only
@pytest.mark.skipif(CMAKE is None or NINJA is None, reason="needs cmake and ninja")
@pytest.mark.skipif(not (VENDOR / "CMakeLists.txt").exists(), reason="vendor/llama.cpp not filled")
def test_amx_flags_win_over_the_sapphirerapids_variant(tmp_path: Path) -> None:
    """The portable wheels' sapphirerapids CPU variant is compiled with -mamx-*; our
    -mno-amx-* must come later and win. Compiles that variant's AMX kernels
    (amx/mmq.cpp) with AMX off and, as a control, on."""
    src = source_tree(tmp_path)
    obj = "llama.cpp/ggml/src/CMakeFiles/ggml-cpu-sapphirerapids.dir/ggml-cpu/amx/mmq.cpp.o"
    counts = {}
    for amx in ("OFF", "ON"):
        build = tmp_path / f"build-{amx}"
        subprocess.run([CMAKE, "-S", str(src), "-B", str(build), "-G", "Ninja", "-DGGML_NATIVE=OFF",
                        "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_RPC=OFF",
                        f"-DCORTEX_LLAMA_AMX={amx}"], capture_output=True, text=True, check=True)
        subprocess.run([NINJA, "-C", str(build), obj], capture_output=True, text=True, check=True)
        counts[amx] = tile_instructions(build / obj)
    assert counts["OFF"] == 0, "AMX instructions in the sapphirerapids variant with AMX off"
    assert counts["ON"] > 0, "control failed: no AMX instructions even with -DCORTEX_LLAMA_AMX=ON"
