"""Chat templates of five target families, written here for tests.

Each reproduces the RENDERING RULES of its family's official template (read for its rules, not copied):
- ``qwen3``: ChatML; the tool definitions in the system turn, after the system prompt; an assistant's reasoning (``reasoning_content``, or ``<think>...</think>`` at the
  start of its content) is shown only for turns after the last user query, and the last turn always
  gets a (possibly empty) ``<think>\\n...\\n</think>\\n\\n`` block; tool calls as ``<tool_call>`` JSON;
  consecutive tool results grouped in one user turn of ``<tool_response>`` blocks.
- ``llama3.1``: BOS, a system header always (knowledge and today's date, then the system prompt),
  header ids around roles, trimmed contents, ``<|eot_id|>``; a tool call is the turn's only text,
  ``{"name": ..., "parameters": ...}``; tool results in the ``ipython`` role, written as JSON.
- ``gpt-oss``: harmony. A fixed system message; the user's system prompt becomes a developer
  message; answers on the ``final`` channel; reasoning on ``analysis``, shown only in the last turn
  or in a tool-calling turn that no later answer follows; tool calls on ``commentary`` addressed
  ``to=functions.NAME`` and ended by ``<|call|>``; the last answer ends with ``<|return|>``, others
  with ``<|end|>``; tool results from ``functions.NAME to=assistant``, written as JSON.
- ``mistral``: BOS, ``[INST] ... [/INST]``, the system prompt prepended to the LAST user turn, answers
  ended by ``</s>``, ``[TOOL_CALLS]`` lists and ``[TOOL_RESULTS]`` objects (the result written as it is); user and answering assistant
  turns must alternate (tool calls and results may come between).
- ``gemma3``: BOS, ``<start_of_turn>user|model``, the system prompt folded into the first user
  turn, trimmed contents, ``<end_of_turn>``; no tool or reasoning support.

`family_tokenizer` gives the tiny test tokenizer these templates and the special tokens they write.
"""

from __future__ import annotations

from typing import Any

QWEN3 = (
    "{%- set ns = namespace(query=messages|length - 1, looking=true) -%}"
    "{%- for m in messages|reverse -%}"
    "{%- if ns.looking and m.role == 'user' and not (m.content.startswith('<tool_response>')"
    " and m.content.endswith('</tool_response>')) -%}"
    "{%- set ns.looking = false -%}{%- set ns.query = messages|length - loop.index -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' + (messages[0].content + '\\n\\n' if messages[0].role == 'system' else '') -}}"
    "{{- '# Tools\\n\\n<tools>' -}}{%- for t in tools -%}{{- '\\n' + t|tojson -}}{%- endfor -%}"
    "{{- '\\n</tools><|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' and tools -%}"
    "{%- elif m.role == 'system' or m.role == 'user' -%}"
    "{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'assistant' -%}"
    "{%- set answer = m.content -%}{%- set thought = '' -%}"
    "{%- if m.reasoning_content is string -%}{%- set thought = m.reasoning_content -%}"
    "{%- elif '</think>' in answer -%}"
    "{%- set thought = answer.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}"
    "{%- set answer = answer.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if loop.index0 > ns.query and (loop.last or thought) -%}"
    "{{- '<think>\\n' + thought.strip('\\n') + '\\n</think>\\n\\n' + answer.lstrip('\\n') -}}"
    "{%- else -%}{{- answer -}}{%- endif -%}"
    "{%- for call in m.tool_calls or [] -%}"
    "{%- set f = call.function or call -%}"
    "{%- if not loop.first or answer -%}{{- '\\n' -}}{%- endif -%}"
    '{{- \'<tool_call>\\n{"name": "\' + f.name + \'", "arguments": \' -}}'
    "{{- (f.arguments if f.arguments is string else f.arguments|tojson) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

LLAMA31 = (
    "{{- bos_token -}}"
    "{%- if messages[0].role == 'system' -%}{%- set system = messages[0].content|trim -%}"
    "{%- set rest = messages[1:] -%}{%- else -%}{%- set system = '' -%}{%- set rest = messages -%}{%- endif -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\nToday Date: ' -}}"
    "{{- (date_string if date_string is defined else '26 Jul 2024') + '\\n\\n' + system + '<|eot_id|>' -}}"
    "{%- for m in rest -%}"
    "{%- if m.role == 'assistant' and m.tool_calls -%}"
    "{%- if m.tool_calls|length != 1 -%}{{- raise_exception('one tool call per message') -}}{%- endif -%}"
    "{%- set f = m.tool_calls[0].function -%}"
    '{{- \'<|start_header_id|>assistant<|end_header_id|>\\n\\n{"name": "\' + f.name + \'", "parameters": \' -}}'
    "{{- f.arguments|tojson + '}<|eot_id|>' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + m.content|tojson + '<|eot_id|>' -}}"
    "{%- else -%}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content|trim + '<|eot_id|>' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

GPT_OSS = (
    "{{- '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\\n' -}}"
    "{{- 'Knowledge cutoff: 2024-06\\n\\nReasoning: ' + (reasoning_effort if reasoning_effort is defined else 'medium') -}}"
    "{{- '\\n\\n# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>' -}}"
    "{%- if messages[0].role == 'system' -%}"
    "{{- '<|start|>developer<|message|># Instructions\\n\\n' + messages[0].content + '<|end|>' -}}"
    "{%- set rest = messages[1:] -%}{%- else -%}{%- set rest = messages -%}{%- endif -%}"
    "{%- set ns = namespace(tool='') -%}"
    "{%- for m in rest -%}"
    "{%- if m.role == 'user' -%}{{- '<|start|>user<|message|>' + m.content + '<|end|>' -}}"
    "{%- elif m.role == 'assistant' and m.tool_calls -%}"
    "{%- set later = namespace(answer=false) -%}"
    "{%- for n in rest[loop.index:] -%}"
    "{%- if n.role == 'assistant' and not n.tool_calls -%}{%- set later.answer = true -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set note = m.thinking or m.content -%}"
    "{%- if note and not later.answer -%}"
    "{{- '<|start|>assistant<|channel|>analysis<|message|>' + note + '<|end|>' -}}"
    "{%- endif -%}"
    "{%- set f = m.tool_calls[0].function -%}{%- set ns.tool = f.name -%}"
    "{{- '<|start|>assistant to=functions.' + f.name + '<|channel|>commentary json<|message|>' -}}"
    "{{- f.arguments|tojson + '<|call|>' -}}"
    "{%- elif m.role == 'assistant' and loop.last and not add_generation_prompt -%}"
    "{%- if m.thinking -%}{{- '<|start|>assistant<|channel|>analysis<|message|>' + m.thinking + '<|end|>' -}}{%- endif -%}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + m.content + '<|return|>' -}}"
    "{%- elif m.role == 'assistant' -%}"
    "{{- '<|start|>assistant<|channel|>final<|message|>' + m.content + '<|end|>' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{{- '<|start|>functions.' + ns.tool + ' to=assistant<|channel|>commentary<|message|>' -}}"
    "{{- m.content|tojson + '<|end|>' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start|>assistant' -}}{%- endif -%}"
)

MISTRAL = (
    "{{- bos_token -}}"
    "{%- if messages[0].role == 'system' -%}{%- set system = messages[0].content -%}"
    "{%- set rest = messages[1:] -%}{%- else -%}{%- set system = '' -%}{%- set rest = messages -%}{%- endif -%}"
    "{%- set turn = namespace(n=0) -%}"
    "{%- for m in rest if m.role == 'user' or (m.role == 'assistant' and not m.tool_calls) -%}"
    "{%- if (m.role == 'user') != (turn.n % 2 == 0) -%}"
    "{{- raise_exception('roles must alternate user/assistant/user/assistant/...') -}}{%- endif -%}"
    "{%- set turn.n = turn.n + 1 -%}{%- endfor -%}"
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in rest -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- for m in rest -%}"
    "{%- if m.role == 'user' -%}"
    "{%- if loop.index0 == ns.last_user and system -%}"
    "{{- '[INST] ' + system + '\\n\\n' + m.content + '[/INST]' -}}"
    "{%- else -%}{{- '[INST] ' + m.content + '[/INST]' -}}{%- endif -%}"
    "{%- elif m.role == 'assistant' and m.tool_calls -%}"
    "{{- '[TOOL_CALLS] [' -}}"
    "{%- for call in m.tool_calls -%}"
    '{{- \'{"name": "\' + call.function.name + \'", "arguments": \' + call.function.arguments|tojson -}}'
    "{%- if call.id -%}{{- ', \"id\": \"' + call.id + '\"' -}}{%- endif -%}"
    "{{- '}' + ('' if loop.last else ', ') -}}"
    "{%- endfor -%}"
    "{{- ']' + eos_token -}}"
    "{%- elif m.role == 'assistant' -%}{{- ' ' + m.content|trim + eos_token -}}"
    "{%- elif m.role == 'tool' -%}"
    "{{- '[TOOL_RESULTS] {\"content\": ' + m.content|string -}}"
    "{%- if m.tool_call_id -%}{{- ', \"call_id\": \"' + m.tool_call_id + '\"' -}}{%- endif -%}"
    "{{- '}[/TOOL_RESULTS]' -}}"
    "{%- endif -%}{%- endfor -%}"
)

GEMMA3 = (
    "{{- bos_token -}}"
    "{%- if messages[0].role == 'system' -%}{%- set prefix = messages[0].content|trim + '\\n\\n' -%}"
    "{%- set rest = messages[1:] -%}{%- else -%}{%- set prefix = '' -%}{%- set rest = messages -%}{%- endif -%}"
    "{%- for m in rest -%}"
    "{%- if (m.role == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('roles must alternate user/assistant/user/assistant/...') -}}{%- endif -%}"
    "{{- '<start_of_turn>' + ('model' if m.role == 'assistant' else m.role) + '\\n' -}}"
    "{{- (prefix if loop.first else '') + m.content|trim + '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

TEMPLATES = {"qwen3": QWEN3, "llama3.1": LLAMA31, "gpt-oss": GPT_OSS, "mistral": MISTRAL, "gemma3": GEMMA3}

# The special tokens each template writes (beyond the tiny tokenizer's own), and its BOS and EOS.
# Qwen3's <think> and <tool_call> tags stay plain text: its tokenizer does not mark them special.
SPECIAL = {
    "qwen3": ([], None, "<|im_end|>"),
    "llama3.1": (["<|eom_id|>", "<|python_tag|>"], "<|begin_of_text|>", "<|eot_id|>"),
    "gpt-oss": (["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>"], None, "<|return|>"),
    "mistral": (
        ["<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"],
        "<s>",
        "</s>",
    ),
    "gemma3": (["<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<end_of_turn>"),
}


def family_tokenizer(tokenizer_dir: Any, family: str) -> Any:
    """The tiny target's tokenizer with `family`'s template, special tokens, BOS and EOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    extra, bos, eos = SPECIAL[family]
    if extra:
        tok.add_tokens(extra, special_tokens=True)
    if bos is not None:
        tok.bos_token = bos
    tok.eos_token = eos
    tok.chat_template = TEMPLATES[family]
    return tok
