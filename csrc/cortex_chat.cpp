// cortex_chat: see cortex_chat.h. Built from the vendored tree's common/ sources
// into libcortex-chat; the logic of a request follows llama-server's
// oaicompat_chat_params_parse (tools/server/server-common.cpp) at the same pin, so
// that a prompt equals llama-server's /apply-template for the same request.

#include "cortex_chat.h"

#include "chat.h"
#include "common.h"
#include "json-schema-to-grammar.h"
#include "json.h"
#include "log.h"

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using json = common_json;

struct cortex_chat_templates {
    common_chat_templates_ptr templates;
};

struct cortex_chat_parser {
    common_chat_parser_params params;
    std::string               text;
    common_chat_msg           message;
    std::vector<std::string>  tool_call_ids;
};

namespace {

struct invalid_input : std::invalid_argument {
    using std::invalid_argument::invalid_argument;
};

char * copy_string(const std::string & text) {
    char * out = static_cast<char *>(std::malloc(text.size() + 1));
    if (out != nullptr) {
        std::memcpy(out, text.c_str(), text.size() + 1);
    }
    return out;
}

// Run fn; its string result (or the exception's message) goes to *out.
template <typename Fn> int guarded(char ** out, Fn && fn) {
    if (out == nullptr) {
        return CORTEX_CHAT_INVALID;
    }
    *out = nullptr;
    try {
        *out = copy_string(fn());
        return CORTEX_CHAT_OK;
    } catch (const std::invalid_argument & e) {
        *out = copy_string(e.what());
        return CORTEX_CHAT_INVALID;
    } catch (const common_json_error & e) {
        *out = copy_string(std::string("invalid JSON: ") + e.what());
        return CORTEX_CHAT_INVALID;
    } catch (const std::exception & e) {
        *out = copy_string(e.what());
        return CORTEX_CHAT_FAILED;
    } catch (...) {
        *out = copy_string("unknown C++ exception in the chat layer");
        return CORTEX_CHAT_FAILED;
    }
}

json parse_object(const char * text, const char * what) {
    if (text == nullptr) {
        throw invalid_input(std::string(what) + " is NULL");
    }
    json value = json::parse(text);
    if (!value.is_object()) {
        throw invalid_input(std::string(what) + " must be a JSON object");
    }
    return value;
}

bool has(const json & body, const std::string & key) {
    return body.contains(key) && !body.at(key).is_null();
}

// body[key] as T, def when absent or null; a value of the wrong type is an error
// (llama-server falls back to the default there, which hides the mistake).
template <typename T> T field(const json & body, const std::string & key, const T & def) {
    if (!has(body, key)) {
        return def;
    }
    try {
        return body.at(key).get<T>();
    } catch (const common_json_error &) {
        throw invalid_input("'" + key + "' has the wrong type: " + body.at(key).dump());
    }
}

std::string random_id() {
    static const char alphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    std::random_device rd;
    std::mt19937 gen(rd());
    std::string id(32, ' ');
    for (auto & c : id) {
        c = alphabet[gen() % (sizeof(alphabet) - 1)];
    }
    return id;
}

// The messages' checks of oaicompat_chat_params_parse.
void check_messages(const json & messages) {
    if (!messages.is_array()) {
        throw invalid_input("'messages' must be an array");
    }
    for (size_t i = 0; i < messages.size(); i++) {
        const json & msg = messages.at(i);
        if (!msg.is_object()) {
            throw invalid_input("messages[" + std::to_string(i) + "] must be an object");
        }
        std::string role = field<std::string>(msg, "role", "");
        if (role != "assistant" && !msg.contains("content")) {
            throw invalid_input("messages[" + std::to_string(i) + "]: every non-assistant message must have 'content'");
        }
        if (role == "assistant" && !msg.contains("content") && !msg.contains("tool_calls")) {
            throw invalid_input("messages[" + std::to_string(i) + "]: an assistant message needs 'content' or 'tool_calls'");
        }
    }
}

// enable_thinking and reasoning_effort as llama-server reads them.
void apply_reasoning_controls(const json & req, const cortex_chat_templates * t, common_chat_templates_inputs & inputs) {
    inputs.reasoning_format = common_reasoning_format_from_name(field<std::string>(req, "reasoning_format", "auto"));
    if (has(req, "enable_thinking")) {
        inputs.enable_thinking = field<bool>(req, "enable_thinking", true);
    } else {
        inputs.enable_thinking = common_chat_templates_support_enable_thinking(t->templates.get());
    }
    // llama-server's default template kwargs: reasoning in the history is kept
    // (common/arg.cpp sets preserve_reasoning unless --no-reasoning-preserve)
    inputs.chat_template_kwargs["preserve_reasoning"] = "true";
    json kwargs = field<json>(req, "chat_template_kwargs", json::object());
    if (!kwargs.is_object()) {
        throw invalid_input("'chat_template_kwargs' must be an object");
    }
    for (const auto & item : kwargs.items()) {
        inputs.chat_template_kwargs[item.key()] = item.value().dump();
    }
    auto it = inputs.chat_template_kwargs.find("enable_thinking");
    if (it != inputs.chat_template_kwargs.end()) {
        if (it->second == "true") {
            inputs.enable_thinking = true;
        } else if (it->second == "false") {
            inputs.enable_thinking = false;
        } else if (!it->second.empty() && it->second[0] == '"') {
            throw invalid_input("chat_template_kwargs.enable_thinking must be a boolean, not a string");
        }
    }
    if (has(req, "reasoning_effort")) {
        std::string effort = field<std::string>(req, "reasoning_effort", "");
        if (effort == "none") {
            inputs.enable_thinking = false;
            inputs.chat_template_kwargs.erase("reasoning_effort");
        } else if (!effort.empty()) {
            inputs.chat_template_kwargs["reasoning_effort"] = json(effort).dump();
        }
    }
}

common_chat_templates_inputs make_inputs(const cortex_chat_templates * t, const json & req) {
    if (!req.contains("messages")) {
        throw invalid_input("'messages' is required");
    }
    check_messages(req.at("messages"));
    auto caps = common_chat_templates_get_caps(t->templates.get());

    common_chat_templates_inputs inputs;
    inputs.messages    = common_chat_msgs_parse_oaicompat(req.at("messages"));
    json tools         = field<json>(req, "tools", json::array());
    inputs.tools       = common_chat_tools_parse_oaicompat(tools);
    inputs.tool_choice = common_chat_tool_choice_parse_oaicompat(field<std::string>(req, "tool_choice", "auto"));
    if (has(req, "json_schema")) {
        inputs.json_schema = req.at("json_schema").dump();
    }
    inputs.grammar             = field<std::string>(req, "grammar", "");
    inputs.use_jinja           = field<bool>(req, "use_jinja", true);  // false: llama_chat_apply_template
    inputs.parallel_tool_calls = field<bool>(req, "parallel_tool_calls", caps["supports_parallel_tool_calls"]);
    inputs.add_generation_prompt = field<bool>(req, "add_generation_prompt", true);
    inputs.continue_final_message = has(req, "continue_final_message")
        ? common_chat_continuation_parse(req.at("continue_final_message"))
        : COMMON_CHAT_CONTINUATION_NONE;
    const bool prefill = field<bool>(req, "prefill_assistant", true);
    const auto & msgs  = inputs.messages;
    if (inputs.continue_final_message == COMMON_CHAT_CONTINUATION_NONE && prefill && !msgs.empty() &&
        msgs.back().role == "assistant") {
        if (msgs.size() >= 2 && msgs[msgs.size() - 2].role == "assistant") {
            throw invalid_input("messages: two or more assistant messages cannot end the list");
        }
        inputs.continue_final_message = COMMON_CHAT_CONTINUATION_AUTO;
        inputs.add_generation_prompt  = false;
    }
    if (inputs.continue_final_message != COMMON_CHAT_CONTINUATION_NONE && inputs.add_generation_prompt) {
        throw invalid_input("add_generation_prompt and continue_final_message cannot both be true");
    }
    if (inputs.continue_final_message != COMMON_CHAT_CONTINUATION_NONE && !msgs.empty() &&
        msgs.back().role == "assistant" && !msgs.back().tool_calls.empty()) {
        throw invalid_input("messages: an assistant message with tool_calls cannot be continued");
    }
    if (!inputs.tools.empty() && inputs.tool_choice != COMMON_CHAT_TOOL_CHOICE_NONE && !inputs.grammar.empty()) {
        throw invalid_input("grammar: a custom grammar cannot be combined with tools");
    }
    if (!inputs.grammar.empty() && !inputs.json_schema.empty()) {
        throw invalid_input("json_schema: give json_schema or grammar, not both");
    }
    apply_reasoning_controls(req, t, inputs);
    return inputs;
}

const char * trigger_type_name(common_grammar_trigger_type type) {
    switch (type) {
        case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN:        return "token";
        case COMMON_GRAMMAR_TRIGGER_TYPE_WORD:         return "word";
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN:      return "pattern";
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: return "pattern_full";
    }
    return "unknown";
}

// Triggers as llama_sampler_init_grammar_lazy_patterns takes them: regex patterns and
// token ids, converted as llama-server and common_sampler_init do.
void add_triggers(json & out, const common_chat_params & params, const llama_vocab * vocab) {
    std::vector<llama_token> preserved;
    if (vocab != nullptr) {
        for (const auto & text : params.preserved_tokens) {
            auto ids = common_tokenize(vocab, text, false, true);
            if (ids.size() == 1) {
                preserved.push_back(ids[0]);
            }
        }
    }
    json patterns = json::array();
    json tokens   = json::array();
    json triggers = json::array();
    for (const auto & trigger : params.grammar_triggers) {
        triggers.push_back(json::object({ { "type", trigger_type_name(trigger.type) }, { "value", trigger.value } }));
        switch (trigger.type) {
            case COMMON_GRAMMAR_TRIGGER_TYPE_WORD: {
                std::vector<llama_token> ids;
                if (vocab != nullptr) {
                    ids = common_tokenize(vocab, trigger.value, false, true);
                }
                if (ids.size() == 1 && std::find(preserved.begin(), preserved.end(), ids[0]) != preserved.end()) {
                    tokens.push_back(ids[0]);
                } else {
                    patterns.push_back(regex_escape(trigger.value));
                }
                break;
            }
            case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN:
                patterns.push_back(trigger.value);
                break;
            case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: {
                const auto & p = trigger.value;
                std::string anchored = "^$";
                if (!p.empty()) {
                    anchored = (p.front() != '^' ? "^" : "") + p + (p.back() != '$' ? "$" : "");
                }
                patterns.push_back(anchored);
                break;
            }
            case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN:
                tokens.push_back(trigger.token);
                break;
        }
    }
    out["grammar_triggers"]    = triggers;
    out["trigger_patterns"]    = patterns;
    out["trigger_tokens"]      = tokens;
    out["preserved_tokens"]    = params.preserved_tokens;
    out["preserved_token_ids"] = preserved;
}

std::string apply(const cortex_chat_templates * t, const llama_vocab * vocab, const char * request_json) {
    if (t == nullptr) {
        throw invalid_input("templates is NULL");
    }
    json req    = parse_object(request_json, "request");
    auto inputs = make_inputs(t, req);
    auto params = common_chat_templates_apply(t->templates.get(), inputs);

    json out = json::object();
    out["prompt"]             = params.prompt;
    out["format"]             = static_cast<int>(params.format);
    out["format_name"]        = common_chat_format_name(params.format);
    out["grammar"]            = params.grammar;
    out["grammar_lazy"]       = params.grammar_lazy;
    out["additional_stops"]   = params.additional_stops;
    out["generation_prompt"]  = params.generation_prompt;
    out["supports_thinking"]  = params.supports_thinking;
    out["thinking_start_tag"] = params.thinking_start_tag;
    out["thinking_end_tags"]  = params.thinking_end_tags;
    out["enable_thinking"]    = inputs.enable_thinking;
    add_triggers(out, params, vocab);

    json parser = json::object();
    parser["format"]            = static_cast<int>(params.format);
    parser["reasoning_format"]  = common_reasoning_format_name(inputs.reasoning_format);
    parser["generation_prompt"] = params.generation_prompt;
    parser["parser"]            = params.parser;
    parser["parse_tool_calls"]  = !inputs.tools.empty() && inputs.tool_choice != COMMON_CHAT_TOOL_CHOICE_NONE;
    parser["is_continuation"]   = inputs.continue_final_message != COMMON_CHAT_CONTINUATION_NONE;
    out["parser"] = parser;
    return out.dump();
}

json delta_to_json(const common_chat_msg_diff & diff) {
    json delta = json::object();
    if (!diff.reasoning_content_delta.empty()) {
        delta["reasoning_content"] = diff.reasoning_content_delta;
    }
    if (!diff.content_delta.empty()) {
        delta["content"] = diff.content_delta;
    }
    if (diff.tool_call_index != std::string::npos) {
        json call = json::object();
        call["index"] = diff.tool_call_index;
        if (!diff.tool_call_delta.id.empty()) {
            call["id"]   = diff.tool_call_delta.id;
            call["type"] = "function";
        }
        json function = json::object();
        if (!diff.tool_call_delta.name.empty()) {
            function["name"] = diff.tool_call_delta.name;
        }
        if (!diff.tool_call_delta.arguments.empty()) {
            function["arguments"] = diff.tool_call_delta.arguments;
        }
        if (!function.empty()) {
            call["function"] = function;
        }
        json calls = json::array();
        calls.push_back(call);
        delta["tool_calls"] = calls;
    }
    return delta;
}

cortex_chat_parser * make_parser(const char * params_json) {
    json req = parse_object(params_json, "parser params");
    auto parser = std::make_unique<cortex_chat_parser>();
    auto & p = parser->params;
    int format = field<int>(req, "format", 0);
    if (format < 0 || format >= COMMON_CHAT_FORMAT_COUNT) {
        throw invalid_input("parser params: unknown format " + std::to_string(format));
    }
    p.format               = static_cast<common_chat_format>(format);
    p.reasoning_format     = common_reasoning_format_from_name(field<std::string>(req, "reasoning_format", "none"));
    p.reasoning_in_content = field<bool>(req, "reasoning_in_content", false);
    p.generation_prompt    = field<std::string>(req, "generation_prompt", "");
    p.parse_tool_calls     = field<bool>(req, "parse_tool_calls", true);
    p.is_continuation      = field<bool>(req, "is_continuation", false);
    std::string arena      = field<std::string>(req, "parser", "");
    if (!arena.empty()) {
        p.parser.load(arena);
    }
    if (p.is_continuation) {
        parser->message = common_chat_parse("", true, p);
    }
    return parser.release();
}

std::string feed(cortex_chat_parser * parser, const char * text_added, bool is_partial) {
    if (parser == nullptr) {
        throw invalid_input("parser is NULL");
    }
    parser->text += text_added != nullptr ? text_added : "";
    auto previous = parser->message;
    auto message  = common_chat_parse(parser->text, is_partial, parser->params);
    json deltas   = json::array();
    if (!message.empty()) {
        message.set_tool_call_ids(parser->tool_call_ids, random_id);
        parser->message = message;
        for (const auto & diff : common_chat_msg_diff::compute_diffs(previous, parser->message)) {
            deltas.push_back(delta_to_json(diff));
        }
    }
    json out = json::object();
    out["message"] = parser->message.to_json_oaicompat();
    out["deltas"]  = deltas;
    return out.dump();
}

}  // namespace

extern "C" {

int cortex_chat_templates_init(const struct llama_model * model, const char * template_override,
                               const char * bos_override, const char * eos_override,
                               struct cortex_chat_templates ** out_templates, char ** out) {
    if (out_templates == nullptr) {
        return CORTEX_CHAT_INVALID;
    }
    *out_templates = nullptr;
    // common/'s own log writes to stderr; its chat warnings are advisory (a template
    // that does not describe tools, a legacy template patched): errors only.
    static std::once_flag quiet;
    std::call_once(quiet, []() { common_log_set_verbosity_thold(LOG_LEVEL_ERROR); });
    int rc = guarded(out, [&]() -> std::string {
        auto holder = std::make_unique<cortex_chat_templates>();
        holder->templates = common_chat_templates_init(model, template_override ? template_override : "",
                                                       bos_override ? bos_override : "",
                                                       eos_override ? eos_override : "");
        if (!holder->templates) {
            throw std::runtime_error("common_chat_templates_init returned no templates");
        }
        *out_templates = holder.release();
        return "";
    });
    if (rc == CORTEX_CHAT_OK && out != nullptr) {
        std::free(*out);
        *out = nullptr;
    }
    return rc;
}

void cortex_chat_templates_free(struct cortex_chat_templates * templates) {
    delete templates;
}

int cortex_chat_templates_info(const struct cortex_chat_templates * templates, char ** out) {
    return guarded(out, [&]() -> std::string {
        if (templates == nullptr) {
            throw invalid_input("templates is NULL");
        }
        const auto * t = templates->templates.get();
        json info = json::object();
        info["caps"]              = common_chat_templates_get_caps(t);
        info["supports_thinking"] = common_chat_templates_support_enable_thinking(t);
        info["source"]            = common_chat_templates_source(t, "");
        info["tool_use_source"]   = common_chat_templates_source(t, "tool_use");
        info["was_explicit"]      = common_chat_templates_was_explicit(t);
        return info.dump();
    });
}

int cortex_chat_apply(const struct cortex_chat_templates * templates, const struct llama_vocab * vocab,
                      const char * request_json, char ** out) {
    return guarded(out, [&]() { return apply(templates, vocab, request_json); });
}

int cortex_chat_parser_init(const char * params_json, struct cortex_chat_parser ** out_parser, char ** out) {
    if (out_parser == nullptr) {
        return CORTEX_CHAT_INVALID;
    }
    *out_parser = nullptr;
    int rc = guarded(out, [&]() -> std::string {
        *out_parser = make_parser(params_json);
        return "";
    });
    if (rc == CORTEX_CHAT_OK && out != nullptr) {
        std::free(*out);
        *out = nullptr;
    }
    return rc;
}

void cortex_chat_parser_free(struct cortex_chat_parser * parser) {
    delete parser;
}

int cortex_chat_parser_feed(struct cortex_chat_parser * parser, const char * text_added, int is_partial,
                            char ** out) {
    return guarded(out, [&]() { return feed(parser, text_added, is_partial != 0); });
}

int cortex_chat_schema_to_grammar(const char * schema_json, char ** out) {
    return guarded(out, [&]() -> std::string {
        if (schema_json == nullptr) {
            throw invalid_input("schema is NULL");
        }
        json schema = json::parse(schema_json);
        json result = json::object();
        result["grammar"] = json_schema_to_grammar(schema);
        return result.dump();
    });
}

void cortex_chat_string_free(char * text) {
    std::free(text);
}

}  // extern "C"
