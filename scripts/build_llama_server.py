#!/usr/bin/env python3
"""Build native llama-server from the vendored llama.cpp into bench/.build-server
(cached: a second run with the same commit does nothing). The template-parity
tests (tests/test_chat_templates.py) and bench/server.py use it.

Usage: python3 scripts/build_llama_server.py [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run import build_native  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    start = time.monotonic()
    bindir = build_native(args.jobs, ROOT / "bench" / ".build-server", ("-DLLAMA_BUILD_SERVER=ON",),
                          ("llama-server",))
    print(f"llama-server in {bindir} ({time.monotonic() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
