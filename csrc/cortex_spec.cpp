// cortex_spec: see cortex_spec.h. Built from the vendored tree's common/ sources
// into libcortex-spec. The draft bookkeeping follows llama-server's use of
// common_speculative (tools/server/server-context.cpp at the same pin): set one
// sequence's draft parameters, call common_speculative_draft, report acceptance.
// With a draft model, llama-server mirrors every target batch into the draft
// context; we instead bring the draft's cells up to the sequence's history just
// before it drafts (the same tokens, decoded lazily, and none for a sequence
// that does not draft), keeping what a rejected draft shares with the history.

#include "cortex_spec.h"

#include "common.h"
#include "log.h"
#include "speculative.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

struct cortex_spec {
    common_speculative * spec = nullptr;
    uint32_t             n_seq = 0;
    std::vector<llama_tokens> history;  // per sequence: the draft call's copy of its tokens
    std::vector<llama_tokens> result;   // per sequence: the draft call's output

    // draft-simple: the draft model's context, what each sequence's cells hold, a batch to fill them
    llama_context *           ctx_dft = nullptr;
    std::vector<llama_tokens> held;
    llama_batch               batch{};
    bool                      has_batch = false;

    ~cortex_spec() {
        common_speculative_free(spec);
        if (has_batch) {
            llama_batch_free(batch);
        }
    }
};

namespace {

char * copy_string(const std::string & text) {
    char * out = static_cast<char *>(std::malloc(text.size() + 1));
    if (out != nullptr) {
        std::memcpy(out, text.c_str(), text.size() + 1);
    }
    return out;
}

// Run fn; an exception's message goes to *err.
template <typename Fn> int guarded(char ** err, Fn && fn) {
    if (err != nullptr) {
        *err = nullptr;
    }
    try {
        fn();
        return CORTEX_SPEC_OK;
    } catch (const std::invalid_argument & e) {
        if (err != nullptr) {
            *err = copy_string(e.what());
        }
        return CORTEX_SPEC_INVALID;
    } catch (const std::exception & e) {
        if (err != nullptr) {
            *err = copy_string(e.what());
        }
        return CORTEX_SPEC_FAILED;
    } catch (...) {
        if (err != nullptr) {
            *err = copy_string("unknown C++ exception in the speculative helpers");
        }
        return CORTEX_SPEC_FAILED;
    }
}

void check_seq(const cortex_spec * s, llama_seq_id seq_id) {
    if (s == nullptr) {
        throw std::invalid_argument("the speculative state is NULL");
    }
    if (seq_id < 0 || (uint32_t) seq_id >= s->n_seq) {
        throw std::invalid_argument("sequence " + std::to_string(seq_id) + " is not in [0, " +
                                    std::to_string(s->n_seq) + ")");
    }
}

void set_ngram_map(common_params_speculative_ngram_map & map, const cortex_spec_params & p) {
    if (p.ngram_size_n > 0) {
        map.size_n = p.ngram_size_n;
    }
    if (p.ngram_size_m > 0) {
        map.size_m = p.ngram_size_m;
    }
    if (p.ngram_min_hits > 0) {
        map.min_hits = p.ngram_min_hits;
    }
}

common_params_speculative to_params(const cortex_spec_params & p) {
    if (p.types == nullptr || *p.types == '\0') {
        throw std::invalid_argument("no speculative type given");
    }
    common_params_speculative params;
    params.types = common_speculative_types_from_names(string_split<std::string>(p.types, ','));
    for (auto type : params.types) {
        if (type == COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE) {
            if (p.ctx_draft == nullptr || p.ctx_target == nullptr) {
                throw std::invalid_argument("speculative type 'draft-simple' needs a draft model's context "
                                            "and the target's");
            }
            continue;
        }
        if (type != COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE && type != COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K &&
            type != COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K4V && type != COMMON_SPECULATIVE_TYPE_NGRAM_MOD &&
            type != COMMON_SPECULATIVE_TYPE_NGRAM_CACHE) {
            throw std::invalid_argument("speculative type '" + common_speculative_type_to_str(type) +
                                        "' is not supported here (n-gram types and draft-simple are)");
        }
    }
    params.draft.ctx_tgt = p.ctx_target;
    params.draft.ctx_dft = p.ctx_draft;
    params.draft.n_max = p.n_max > 0 ? p.n_max : 16;
    params.draft.n_min = 0;  // the caller drops short drafts
    params.draft.p_min = p.draft_p_min;
    set_ngram_map(params.ngram_simple, p);
    set_ngram_map(params.ngram_map_k, p);
    set_ngram_map(params.ngram_map_k4v, p);
    if (p.ngram_mod_n_match > 0) {
        params.ngram_mod.n_match = p.ngram_mod_n_match;
    }
    if (p.ngram_mod_n_min > 0) {
        params.ngram_mod.n_min = p.ngram_mod_n_min;
    }
    if (p.ngram_mod_n_max > 0) {
        params.ngram_mod.n_max = p.ngram_mod_n_max;
    }
    return params;
}

void check_tokens(const llama_token * tokens, int32_t n, const char * what) {
    if (n < 0 || (n > 0 && tokens == nullptr)) {
        throw std::invalid_argument(std::string("bad ") + what + " (" + std::to_string(n) + " tokens)");
    }
}

// Media entries (negative ids): a draft model cannot read them.
bool has_media(const llama_token * tokens, int32_t n) {
    return std::any_of(tokens, tokens + n, [](llama_token t) { return t < 0; });
}

bool has_type(const common_params_speculative & params, common_speculative_type type) {
    return std::find(params.types.begin(), params.types.end(), type) != params.types.end();
}

// A draft model that does not share the target's vocabulary: llama.cpp's message, with both sizes.
std::string vocab_mismatch(const cortex_spec_params & p, const std::string & what) {
    const int n_tgt = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(p.ctx_target)));
    const int n_dft = llama_vocab_n_tokens(llama_model_get_vocab(llama_get_model(p.ctx_draft)));
    return what + " (the target's vocabulary has " + std::to_string(n_tgt) + " tokens, the draft model's " +
           std::to_string(n_dft) + ")";
}

// Make seq_id's cells in the draft context hold exactly history[0..n): keep the common
// prefix with what they hold, drop the rest, decode what is missing. False when the
// draft context cannot take them (its cells are then emptied).
bool sync_draft(cortex_spec * s, llama_seq_id seq_id, const llama_token * history, int32_t n) {
    llama_tokens & held = s->held[seq_id];
    llama_memory_t mem = llama_get_memory(s->ctx_dft);
    size_t keep = 0;
    while (keep < held.size() && keep < (size_t) n && held[keep] == history[keep]) {
        ++keep;
    }
    if (keep < held.size()) {
        llama_memory_seq_rm(mem, seq_id, (llama_pos) keep, -1);
        held.resize(keep);
    }
    const int32_t n_batch = (int32_t) llama_n_batch(s->ctx_dft);
    while ((int32_t) held.size() < n) {
        const int32_t start = (int32_t) held.size();
        const int32_t count = std::min(n - start, n_batch);
        s->batch.n_tokens = count;
        for (int32_t i = 0; i < count; ++i) {
            s->batch.token[i] = history[start + i];
            s->batch.pos[i] = start + i;
            s->batch.n_seq_id[i] = 1;
            s->batch.seq_id[i][0] = seq_id;
            s->batch.logits[i] = 0;
        }
        if (llama_decode(s->ctx_dft, s->batch) != 0) {
            llama_memory_seq_rm(mem, seq_id, -1, -1);
            held.clear();
            return false;
        }
        held.insert(held.end(), history + start, history + start + count);
    }
    return true;
}

// After a draft: sync_draft left held == the history, then the draft model decoded id_last
// and (most of) the draft after it. Keep what its cells hold; drop anything beyond.
void note_drafted(cortex_spec * s, llama_seq_id seq_id, llama_token id_last) {
    llama_tokens & held = s->held[seq_id];
    const llama_tokens & result = s->result[seq_id];
    const llama_pos pos_max = llama_memory_seq_pos_max(llama_get_memory(s->ctx_dft), seq_id);
    const size_t n_cells = pos_max < 0 ? 0 : (size_t) pos_max + 1;
    if (n_cells < held.size()) {
        held.resize(n_cells);
    } else if (n_cells > held.size()) {
        const size_t n_new = std::min(n_cells - held.size(), result.size() + 1);
        held.push_back(id_last);
        held.insert(held.end(), result.begin(), result.begin() + (n_new - 1));
    }
    llama_memory_seq_rm(llama_get_memory(s->ctx_dft), seq_id, (llama_pos) held.size(), -1);
}

}  // namespace

extern "C" {

int cortex_spec_init(const cortex_spec_params * params, uint32_t n_seq, cortex_spec ** out_spec, char ** err) {
    static std::once_flag quiet;
    std::call_once(quiet, []() { common_log_set_verbosity_thold(LOG_LEVEL_ERROR); });
    return guarded(err, [&]() {
        if (params == nullptr || out_spec == nullptr) {
            throw std::invalid_argument("params and out_spec must not be NULL");
        }
        if (n_seq == 0) {
            throw std::invalid_argument("n_seq must be at least 1");
        }
        *out_spec = nullptr;
        common_params_speculative p = to_params(*params);
        auto holder = std::make_unique<cortex_spec>();
        if (has_type(p, COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE)) {
            if (llama_n_seq_max(params->ctx_draft) != n_seq) {
                throw std::invalid_argument("the draft context has " + std::to_string(llama_n_seq_max(params->ctx_draft)) +
                                            " sequences, the drafter serves " + std::to_string(n_seq));
            }
            holder->ctx_dft = params->ctx_draft;
            holder->held.resize(n_seq);
            holder->batch = llama_batch_init((int32_t) llama_n_batch(params->ctx_draft), 0, 1);
            holder->has_batch = true;
        }
        try {
            holder->spec = common_speculative_init(p, n_seq);
        } catch (const std::runtime_error & e) {
            if (holder->ctx_dft == nullptr) {
                throw;
            }
            throw std::invalid_argument(vocab_mismatch(*params, e.what()));
        }
        if (holder->spec == nullptr) {
            throw std::invalid_argument(std::string("no speculative implementation for '") + params->types + "'");
        }
        holder->n_seq = n_seq;
        holder->history.resize(n_seq);
        holder->result.resize(n_seq);
        *out_spec = holder.release();
    });
}

void cortex_spec_free(cortex_spec * spec) {
    delete spec;
}

int32_t cortex_spec_n_max(const cortex_spec * spec) {
    return spec == nullptr ? 0 : common_speculative_n_max(spec->spec);
}

int cortex_spec_begin(cortex_spec * spec, llama_seq_id seq_id, const llama_token * prompt, int32_t n_prompt,
                      char ** err) {
    return guarded(err, [&]() {
        check_seq(spec, seq_id);
        check_tokens(prompt, n_prompt, "prompt");
        llama_tokens tokens(prompt, prompt + n_prompt);
        common_speculative_begin(spec->spec, seq_id, tokens);
    });
}

int cortex_spec_draft_many(cortex_spec * spec, cortex_spec_request * requests, int32_t n_requests, char ** err) {
    return guarded(err, [&]() {
        if (spec == nullptr || n_requests < 0 || (n_requests > 0 && requests == nullptr)) {
            throw std::invalid_argument("bad draft requests (" + std::to_string(n_requests) + ")");
        }
        std::vector<bool> seen(spec->n_seq, false);
        for (int32_t i = 0; i < n_requests; ++i) {
            cortex_spec_request & r = requests[i];
            check_seq(spec, r.seq_id);
            check_tokens(r.history, r.n_history, "history");
            if (r.out == nullptr || r.out_cap < 0 || seen[r.seq_id]) {
                throw std::invalid_argument("request " + std::to_string(i) + ": out must not be NULL, out_cap "
                                            "must be >= 0, and each sequence is drafted once per call");
            }
            seen[r.seq_id] = true;
            r.n_out = 0;
        }
        std::vector<int32_t> drafting;  // the requests handed to common_speculative_draft
        for (int32_t i = 0; i < n_requests; ++i) {
            cortex_spec_request & r = requests[i];
            const int32_t cap = std::min(r.n_max, r.out_cap);
            if (cap <= 0) {
                continue;
            }
            if (spec->ctx_dft != nullptr && (has_media(r.history, r.n_history) || r.id_last < 0 ||
                                             !sync_draft(spec, r.seq_id, r.history, r.n_history))) {
                continue;  // media the draft model cannot read, or no room in its cells: no draft
            }
            spec->history[r.seq_id].assign(r.history, r.history + r.n_history);
            spec->result[r.seq_id].clear();
            auto & dp = common_speculative_get_draft_params(spec->spec, r.seq_id);
            dp.drafting = true;
            dp.n_max = cap;
            dp.pos0 = r.n_history;
            dp.id_last = r.id_last;
            dp.prompt = &spec->history[r.seq_id];
            dp.result = &spec->result[r.seq_id];
            drafting.push_back(i);
        }
        if (drafting.empty()) {
            return;
        }
        common_speculative_draft(spec->spec);  // every drafting sequence at once (a draft model: one batch a step)
        for (int32_t i : drafting) {
            cortex_spec_request & r = requests[i];
            auto & dp = common_speculative_get_draft_params(spec->spec, r.seq_id);
            dp.drafting = false;
            dp.prompt = nullptr;
            dp.result = nullptr;
            if (spec->ctx_dft != nullptr) {
                note_drafted(spec, r.seq_id, r.id_last);
            }
            const llama_tokens & result = spec->result[r.seq_id];
            const int32_t n = std::min<int32_t>((int32_t) result.size(), std::min(r.n_max, r.out_cap));
            std::copy(result.begin(), result.begin() + n, r.out);
            r.n_out = n;
        }
    });
}

int cortex_spec_sync(cortex_spec * spec, llama_seq_id seq_id, const llama_token * history, int32_t n_history,
                     char ** err) {
    return guarded(err, [&]() {
        check_seq(spec, seq_id);
        check_tokens(history, n_history, "history");
        if (spec->ctx_dft != nullptr && !has_media(history, n_history)) {
            sync_draft(spec, seq_id, history, n_history);
        }
    });
}

int cortex_spec_accept(cortex_spec * spec, llama_seq_id seq_id, uint16_t n_accepted, char ** err) {
    return guarded(err, [&]() {
        check_seq(spec, seq_id);
        common_speculative_accept(spec->spec, seq_id, n_accepted);
    });
}

void cortex_spec_string_free(char * text) {
    std::free(text);
}

}  // extern "C"
