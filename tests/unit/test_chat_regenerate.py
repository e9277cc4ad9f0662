"""``longdraft regenerate`` keeps thinking and tool calls intact."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import longdraft.regenerate as regen
from longdraft.config import config_from_dict
from longdraft.data.reasoning import split_reasoning
from longdraft.data.rows import parse_row
from longdraft.data.tokenize import render_chat, tokenize_conversation
from longdraft.eval.speculative import greedy_generate
from longdraft.eval.target_runner import TargetRunner, stop_token_ids
from longdraft.testing.chat_templates import family_tokenizer
from longdraft.testing.tiny_target import build_tiny_target

CALL = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "c1"}]
ROW = {
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "reasoning_content": "Call the tool.", "tool_calls": CALL},
        {"role": "tool", "content": "sunny", "name": "get_weather", "tool_call_id": "c1"},
        {"role": "assistant", "content": "It is sunny.", "reasoning_content": "The tool says sunny."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."},
    ],
    "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
}
NEW = 10


def test_reasoning_is_split_from_think_tags_and_harmony_channels():
    assert split_reasoning("<think>\nHmm.\n</think>\n\nParis.", "") == ("Hmm.", "Paris.")
    assert split_reasoning("\n\n</think>\n\nParis.", "") == ("", "Paris.")  # the prompt opened the block
    harmony = "<|channel|>analysis<|message|>Hmm.<|end|><|start|>assistant<|channel|>final<|message|>Paris.<|return|>"
    assert split_reasoning("analysisHmm.assistantfinalParis.", harmony) == ("Hmm.", "Paris.")
    assert split_reasoning("Paris.", "Paris.<|im_end|>") == (None, "Paris.")


@pytest.fixture(scope="module")
def qwen3_target(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("regen_chat")
    target = build_tiny_target(root / "target", initializer_range=0.3, seed=4)
    family_tokenizer(target, "qwen3").save_pretrained(target)  # same vocabulary, Qwen3's template
    (root / "train.jsonl").write_text(json.dumps(ROW) + "\n")
    return root, target


def _cfg(root, target):
    return config_from_dict(
        {
            "data": {"train_path": str(root / "train.jsonl")},
            "model": {"target_path": str(target)},
            "training": {"device": "cpu"},
            "output": {"dir": str(root / "out")},
        }
    )


@pytest.mark.timeout(240)
def test_tool_calls_tool_results_and_reasoning_survive_a_regeneration(qwen3_target, tmp_path):
    root, target = qwen3_target
    out = tmp_path / "out.jsonl"
    summary = regen.regenerate(_cfg(root, target), out, regen.RegenerateSettings(max_new_tokens=NEW), progress=False)
    assert summary["rows_written"] == 1
    (got,) = [json.loads(line) for line in out.read_text().splitlines()]
    before, after = parse_row(ROW).messages, got["conversations"]
    assert got["tools"] == ROW["tools"]
    assert [m["role"] for m in after] == [m["role"] for m in before]
    for j in (0, 1, 2, 3, 5):  # system, user, the tool-calling turn with its reasoning, the tool result
        assert after[j] == before[j]
    # The plain answers are the target's own greedy continuations of the regenerated conversation.
    model = AutoModelForCausalLM.from_pretrained(target, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(target, local_files_only=True)
    runner = TargetRunner(model)
    with torch.no_grad():
        for j in (4, 6):
            prompt = tok(render_chat(tok, after[:j], True, ROW["tools"]), add_special_tokens=False)
            new = greedy_generate(runner, prompt["input_ids"], NEW, stop_token_ids(model) | {tok.eos_token_id})
            assert after[j] == {"role": "assistant", "content": tok.decode(new, skip_special_tokens=True).strip()}
    runner.close()
    assert after[4] != before[4]
    ids, mask = tokenize_conversation(tok, parse_row(got).messages, ROW["tools"])  # the new row trains
    assert sum(mask) > 0


class ScriptedTarget(regen.Generator):
    """A target that thinks before it answers: its generations are given, the rest is the real Generator."""

    def generate(self, prompts, budgets):
        text = "<think>\nLet me see.\n</think>\n\nHere it is.<|im_end|>"
        return [self.tokenizer(text, add_special_tokens=False)["input_ids"] for _ in prompts]


def test_a_thinking_targets_reasoning_is_kept_beside_its_answer_and_trained(qwen3_target):
    _, target = qwen3_target
    tok = AutoTokenizer.from_pretrained(target, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(target, local_files_only=True)
    gen = ScriptedTarget(model, tok, regen.RegenerateSettings(), {tok.eos_token_id})
    (row,) = regen.regenerate_rows([parse_row(ROW)], gen)
    messages = row["conversations"]
    assert messages[2] == parse_row(ROW).messages[2]  # the tool call, untouched
    for j in (4, 6):
        assert messages[j] == {"role": "assistant", "content": "Here it is.", "reasoning_content": "Let me see."}
    ids, mask = tokenize_conversation(tok, parse_row(row).messages)
    runs = tok.decode([t for t, b in zip(ids, mask) if b], clean_up_tokenization_spaces=False)
    # Qwen3 shows the last turn's reasoning (after the last query), and it carries loss.
    assert runs.endswith("<think>\nLet me see.\n</think>\n\nHere it is.<|im_end|>")
