"""The C reference for "same output as llama.cpp": a plain program over the
package's libllama that decodes greedily with ``llama_context_default_params()``
(flash attention auto, as every llama.cpp tool starts), changing only
``n_ctx``/``n_batch`` (512) and the thread counts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cortex_llama

from .conftest import VENDOR, have_cc

NATIVE_GREEDY_C = r"""
#include "llama.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static void quiet(enum ggml_log_level l, const char * t, void * u) { (void)l; (void)t; (void)u; }
int main(int argc, char ** argv) {
    const char * prompt = argv[2];
    int n_predict = atoi(argv[3]), n_threads = atoi(argv[4]);
    llama_log_set(quiet, NULL);
    if (ggml_backend_reg_count() == 0) ggml_backend_load_all_from_path(argv[5]);  /* GGML_BACKEND_DL */
    llama_backend_init();
    struct llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) return 2;
    const struct llama_vocab * vocab = llama_model_get_vocab(model);
    int n = -llama_tokenize(vocab, prompt, (int) strlen(prompt), NULL, 0, true, false);
    llama_token * toks = malloc(sizeof(llama_token) * n);
    llama_tokenize(vocab, prompt, (int) strlen(prompt), toks, n, true, false);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512; cp.n_batch = 512; cp.n_threads = n_threads; cp.n_threads_batch = n_threads;
    struct llama_context * ctx = llama_init_from_model(model, cp);
    struct llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
    struct llama_batch batch = llama_batch_get_one(toks, n);
    llama_token tok;
    for (int i = 0; i < n_predict; i++) {
        if (llama_decode(ctx, batch)) return 3;
        tok = llama_sampler_sample(smpl, ctx, -1);
        printf("%d\n", tok);
        batch = llama_batch_get_one(&tok, 1);
    }
    llama_sampler_free(smpl); llama_free(ctx); llama_model_free(model); free(toks);
    return 0;
}
"""


def build_greedy_reference(workdir: Path, cc: str | None = None) -> Path:
    """Compile the reference program into ``workdir``; returns the executable."""
    compiler = cc or have_cc()
    assert compiler is not None, "no C compiler"
    libdir = cortex_llama._lib.lib_dir
    src = workdir / "greedy.c"
    src.write_text(NATIVE_GREEDY_C)
    exe = workdir / "greedy"
    subprocess.run([compiler, "-std=c11", "-O1", "-I", str(VENDOR / "include"), "-I",
                    str(VENDOR / "ggml" / "include"), str(src), "-o", str(exe), f"-L{libdir}",
                    "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{libdir}"], check=True)
    return exe


def run_greedy_reference(exe: Path, model_path: Path, prompt: str, n: int, threads: int = 2) -> list[int]:
    """The ``n`` greedy tokens the reference program prints for ``prompt``."""
    out = subprocess.run([str(exe), str(model_path), prompt, str(n), str(threads),
                          str(cortex_llama._lib.lib_dir)], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    return [int(x) for x in out.split()]
