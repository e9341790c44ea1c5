// cortex_chat: a C ABI over llama.cpp's own chat layer (common/chat.h) and its
// JSON-schema-to-grammar converter (common/json-schema-to-grammar.h).
//
// JSON strings go in and come out. Every call that can fail returns a
// cortex_chat_status; *out then holds a malloc'd, NUL-terminated string: the
// JSON result on CORTEX_CHAT_OK, the error message otherwise. Free it with
// cortex_chat_string_free. Nothing here throws across the C boundary.
//
// scripts/gen_cdef.py reads this header into cortex_llama/_cdef.py (CHAT_CDEF).
#pragma once

#include "llama.h"

#if defined(_WIN32) && defined(CORTEX_CHAT_BUILD)
#    define CORTEX_CHAT_API __declspec(dllexport)
#elif defined(_WIN32)
#    define CORTEX_CHAT_API __declspec(dllimport)
#else
#    define CORTEX_CHAT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum cortex_chat_status {
    CORTEX_CHAT_OK      = 0,
    CORTEX_CHAT_INVALID = 1,  // bad input: a malformed request, message, tool or schema
    CORTEX_CHAT_FAILED  = 2,  // anything else (a template that raises while rendering, ...)
};

struct cortex_chat_templates;
struct cortex_chat_parser;

// The model's chat templates (default and tool_use variants), or template_override
// when it is not empty (Jinja source, or a built-in name llama.cpp knows).
// bos/eos overrides may be empty. On success *out_templates is set and *out is NULL.
CORTEX_CHAT_API int cortex_chat_templates_init(const struct llama_model * model, const char * template_override,
                                               const char * bos_override, const char * eos_override,
                               struct cortex_chat_templates ** out_templates, char ** out);
CORTEX_CHAT_API void cortex_chat_templates_free(struct cortex_chat_templates * templates);

// {"caps": {...}, "supports_thinking": bool, "source": str, "tool_use_source": str,
//  "was_explicit": bool}
CORTEX_CHAT_API int cortex_chat_templates_info(const struct cortex_chat_templates * templates, char ** out);

// Render a conversation the way llama-server does for /v1/chat/completions.
// request_json: {"messages", "tools", "tool_choice", "parallel_tool_calls", "json_schema",
//   "grammar", "add_generation_prompt", "continue_final_message", "reasoning_format",
//   "reasoning_effort", "enable_thinking", "chat_template_kwargs", "prefill_assistant",
//   "use_jinja" (false: llama.cpp's built-in template of that name, no tools)}
// vocab (may be NULL) turns single-token trigger words into trigger tokens.
// Result: {"prompt", "format", "format_name", "grammar", "grammar_lazy", "trigger_patterns",
//   "trigger_tokens", "preserved_tokens", "preserved_token_ids", "additional_stops",
//   "generation_prompt", "supports_thinking", "thinking_start_tag", "thinking_end_tags",
//   "enable_thinking", "parser": {parser params for cortex_chat_parser_init}}
CORTEX_CHAT_API int cortex_chat_apply(const struct cortex_chat_templates * templates, const struct llama_vocab * vocab,
                      const char * request_json, char ** out);

// A parser of one assistant output, fed as it grows. params_json is apply's "parser"
// object (plus "reasoning_in_content" where wanted).
CORTEX_CHAT_API int cortex_chat_parser_init(const char * params_json, struct cortex_chat_parser ** out_parser, char ** out);
CORTEX_CHAT_API void cortex_chat_parser_free(struct cortex_chat_parser * parser);

// Append text_added to the output and parse it all (is_partial: more is to come).
// Result: {"message": {"role", "content", "reasoning_content", "tool_calls": [...]},
//   "deltas": [{"content"?, "reasoning_content"?, "tool_calls"?: [{index, id?, type?,
//   function: {name?, arguments?}}]}]}: the OpenAI-shaped deltas since the last call.
CORTEX_CHAT_API int cortex_chat_parser_feed(struct cortex_chat_parser * parser, const char * text_added, int is_partial,
                            char ** out);

// GBNF for a JSON schema (llama.cpp's converter). Result: {"grammar": str}.
CORTEX_CHAT_API int cortex_chat_schema_to_grammar(const char * schema_json, char ** out);

CORTEX_CHAT_API void cortex_chat_string_free(char * text);

#ifdef __cplusplus
}
#endif
