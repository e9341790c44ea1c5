#!/usr/bin/env bash
# Build cortex-llama's libraries with the Vulkan backend and run the Vulkan tests on
# Mesa's software driver (lavapipe). Not part of CI (the default build is CPU-only).
#
#   bash scripts/check_vulkan.sh            # apt packages, build, info, pytest -m vulkan
#
# Needs Debian/Ubuntu packages: libvulkan-dev glslc spirv-headers mesa-vulkan-drivers
# (installed here with apt-get when missing and running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${VULKAN_BUILD_DIR:-$root/build/vulkan}
prefix=$build/install

pkgs=(libvulkan-dev glslc spirv-headers mesa-vulkan-drivers)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "missing packages: ${missing[*]} (install them, e.g. with apt-get)" >&2
        exit 1
    fi
fi

# This llama.cpp uses VK_EXT_layer_settings (Vulkan headers 1.3.272+); Debian 12 ships
# 1.3.239. Then take the newer headers (header-only) from Debian 13's libvulkan-dev,
# unpacked into the build folder; the system's loader, glslc and lavapipe stay.
vk_args=()
if ! grep -q "define VK_EXT_layer_settings 1" /usr/include/vulkan/vulkan_core.h; then
    headers=$build/vulkan-headers
    if [[ ! -f $headers/usr/include/vulkan/vulkan.hpp ]]; then
        echo "system Vulkan headers lack VK_EXT_layer_settings: unpacking Debian 13's libvulkan-dev"
        apt_dir=$build/apt
        mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$headers"
        echo "deb http://deb.debian.org/debian trixie main" > "$apt_dir/sources.list"
        apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
                  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
        apt-get "${apt_opts[@]}" update -qq
        (cd "$apt_dir" && apt-get "${apt_opts[@]}" download libvulkan-dev 2>/dev/null)
        dpkg -x "$apt_dir"/libvulkan-dev_*.deb "$headers"
    fi
    vk_args=(-DVulkan_INCLUDE_DIR="$headers/usr/include")
fi

python3 scripts/fetch_llama_cpp.py
start=$(date +%s)
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DGGML_VULKAN=ON "${vk_args[@]}"
cmake --build "$build" -j "$(nproc)"
cmake --install "$build" --prefix "$prefix" >/dev/null
echo "Vulkan build took $(( $(date +%s) - start )) s"

# ggml skips CPU-type Vulkan devices (lavapipe) unless they are named explicitly.
export CORTEX_LLAMA_LIB_DIR=$prefix/cortex_llama/lib GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
python3 -m cortex_llama info
python3 -m pytest -m "vulkan or gpu" -v tests/test_vulkan.py tests/test_gpu.py
