// cortex_spec: see cortex_spec.h. Built from the vendored tree's common/ sources
// into libcortex-spec. The draft bookkeeping follows llama-server's use of
// common_speculative (tools/server/server-context.cpp at the same pin): set one
// sequence's draft parameters, call common_speculative_draft, report acceptance.

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
    llama_tokens         history;  // the draft call's copy of a sequence's tokens
    llama_tokens         result;   // the draft call's output

    ~cortex_spec() { common_speculative_free(spec); }
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
        if (type != COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE && type != COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K &&
            type != COMMON_SPECULATIVE_TYPE_NGRAM_MAP_K4V && type != COMMON_SPECULATIVE_TYPE_NGRAM_MOD &&
            type != COMMON_SPECULATIVE_TYPE_NGRAM_CACHE) {
            throw std::invalid_argument("speculative type '" + common_speculative_type_to_str(type) +
                                        "' is not an n-gram type (this library drafts by n-gram lookup; "
                                        "a draft model goes through the engine's own draft context)");
        }
    }
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
        holder->spec = common_speculative_init(p, n_seq);
        if (holder->spec == nullptr) {
            throw std::invalid_argument(std::string("no speculative implementation for '") + params->types + "'");
        }
        holder->n_seq = n_seq;
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
        if (n_prompt < 0 || (n_prompt > 0 && prompt == nullptr)) {
            throw std::invalid_argument("bad prompt (" + std::to_string(n_prompt) + " tokens)");
        }
        llama_tokens tokens(prompt, prompt + n_prompt);
        common_speculative_begin(spec->spec, seq_id, tokens);
    });
}

int cortex_spec_draft(cortex_spec * spec, llama_seq_id seq_id, const llama_token * history, int32_t n_history,
                      llama_token id_last, llama_pos pos0, int32_t n_max, llama_token * out, int32_t out_cap,
                      int32_t * n_out, char ** err) {
    return guarded(err, [&]() {
        check_seq(spec, seq_id);
        if (n_out == nullptr || out == nullptr || out_cap < 0) {
            throw std::invalid_argument("out and n_out must not be NULL, out_cap must be >= 0");
        }
        *n_out = 0;
        if (n_history < 0 || (n_history > 0 && history == nullptr)) {
            throw std::invalid_argument("bad history (" + std::to_string(n_history) + " tokens)");
        }
        const int32_t cap = std::min(n_max, out_cap);
        if (cap <= 0) {
            return;
        }
        spec->history.assign(history, history + n_history);
        spec->result.clear();
        auto & dp = common_speculative_get_draft_params(spec->spec, seq_id);
        dp.drafting = true;
        dp.n_max = cap;
        dp.pos0 = pos0;
        dp.id_last = id_last;
        dp.prompt = &spec->history;
        dp.result = &spec->result;
        common_speculative_draft(spec->spec);
        dp.prompt = nullptr;
        dp.result = nullptr;
        const int32_t n = std::min<int32_t>((int32_t) spec->result.size(), cap);
        std::copy(spec->result.begin(), spec->result.begin() + n, out);
        *n_out = n;
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
