// cortex_spec: a C ABI over llama.cpp's own speculative-decoding helpers
// (common/speculative.h with common/ngram-map.h, ngram-mod.h, ngram-cache.h,
// and its draft-model drafter, draft-simple).
//
// One cortex_spec serves n_seq sequences (the engine's slots). The engine asks
// for one sequence's draft at a time (its history, its newest token, the most it
// may draft), verifies it with the target model and reports how many drafted
// tokens were accepted. Calls that can fail return a cortex_spec_status and put
// a malloc'd error message into *err (free it with cortex_spec_string_free).
// Nothing here throws across the C boundary.
//
// With a draft model (draft-simple), the caller owns its context (one sequence
// per slot, as the target's). Before each draft the shim brings that sequence's
// cells to the history it is given: it keeps the longest common prefix of what
// the cells hold, removes the rest and decodes what is missing (so prefix reuse,
// preemption and rejected drafts need no calls of their own).
//
// scripts/gen_cdef.py reads this header into cortex_llama/_cdef.py (SPEC_CDEF).
#pragma once

#include "llama.h"

#if defined(_WIN32) && defined(CORTEX_SPEC_BUILD)
#    define CORTEX_SPEC_API __declspec(dllexport)
#elif defined(_WIN32)
#    define CORTEX_SPEC_API __declspec(dllimport)
#else
#    define CORTEX_SPEC_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum cortex_spec_status {
    CORTEX_SPEC_OK      = 0,
    CORTEX_SPEC_INVALID = 1,  // bad input: an unknown type name, a value out of range
    CORTEX_SPEC_FAILED  = 2,  // anything else
};

struct cortex_spec;

// The draft sources, as llama-server's --spec-type and --spec-ngram-* options
// name them. Fields left at 0 keep llama.cpp's defaults (common_params_speculative).
struct cortex_spec_params {
    const char * types;  // comma-separated: "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod",
                         // "ngram-cache", "draft-simple" (needs ctx_draft)
    int32_t n_max;       // the most tokens one draft may hold (0: each type's own limit)
    uint16_t ngram_size_n;     // lookup n-gram length of ngram-simple / ngram-map-k / -k4v
    uint16_t ngram_size_m;     // drafted m-gram length of the same
    uint16_t ngram_min_hits;   // key hits before a map-based draft is made
    int32_t ngram_mod_n_match; // ngram-mod lookup length
    int32_t ngram_mod_n_min;   // ngram-mod: shortest draft kept
    int32_t ngram_mod_n_max;   // ngram-mod: longest draft
    struct llama_context * ctx_target;  // draft-simple: the target's context (for the vocabulary check)
    struct llama_context * ctx_draft;   // draft-simple: the draft model's context, n_seq sequences
    float draft_p_min;                  // draft-simple: stop at a token drafted with less probability
};

CORTEX_SPEC_API int cortex_spec_init(const struct cortex_spec_params * params, uint32_t n_seq,
                                     struct cortex_spec ** out_spec, char ** err);
CORTEX_SPEC_API void cortex_spec_free(struct cortex_spec * spec);

// The longest draft the configured types can make.
CORTEX_SPEC_API int32_t cortex_spec_n_max(const struct cortex_spec * spec);

// A new generation starts in seq_id over prompt[0..n_prompt) (map-based types index it).
CORTEX_SPEC_API int cortex_spec_begin(struct cortex_spec * spec, llama_seq_id seq_id,
                                      const llama_token * prompt, int32_t n_prompt, char ** err);

// One sequence's draft request: history[0..n_history) is what its cells hold, id_last
// the newest token (at position n_history, not decoded yet); at most min(n_max, out_cap)
// tokens go to out, n_out gets their number (0: no draft). A history with a negative
// entry (media) gets no draft from a draft model.
struct cortex_spec_request {
    llama_seq_id seq_id;
    const llama_token * history;
    int32_t n_history;
    llama_token id_last;
    int32_t n_max;
    llama_token * out;
    int32_t out_cap;
    int32_t n_out;  // set by the call
};

// Draft for requests[0..n_requests), each sequence at most once, all at once (a draft
// model decodes one batch a step for all of them).
CORTEX_SPEC_API int cortex_spec_draft_many(struct cortex_spec * spec, struct cortex_spec_request * requests,
                                           int32_t n_requests, char ** err);

// Bring a draft model's cells of seq_id to history[0..n_history) (what cortex_spec_draft_many
// does first; call it to do that work apart). No-op without a draft model, or for a
// history with media.
CORTEX_SPEC_API int cortex_spec_sync(struct cortex_spec * spec, llama_seq_id seq_id, const llama_token * history,
                                     int32_t n_history, char ** err);

// The target accepted n_accepted tokens of seq_id's last draft.
CORTEX_SPEC_API int cortex_spec_accept(struct cortex_spec * spec, llama_seq_id seq_id, uint16_t n_accepted,
                                       char ** err);

CORTEX_SPEC_API void cortex_spec_string_free(char * text);

#ifdef __cplusplus
}
#endif
