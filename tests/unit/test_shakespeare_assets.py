"""The shipped quick-start assets: the Shakespeare target loads offline and the JSONL data sets parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "shakespeare"
TARGET = EXAMPLE / "target"
DATA = EXAMPLE / "data"
DATA_FILES = ("train_text.jsonl", "heldout_text.jsonl", "train_chat.jsonl", "heldout_chat.jsonl")


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise AssertionError(f"{path}:{number}: not JSON ({err})") from err
    return rows


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TARGET, local_files_only=True)


def test_target_directory_is_small_and_complete():
    names = {p.name for p in TARGET.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training_summary.json"} <= names
    total = sum(p.stat().st_size for p in TARGET.iterdir())
    assert total <= 20 * 2**20, f"{TARGET}: {total} bytes > 20 MiB"


def test_target_model_loads_offline_with_eagle3_friendly_shape():
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TARGET, local_files_only=True)
    config = model.config
    n = config.num_hidden_layers
    assert len({1, n // 2 - 1, n - 4}) == 3, "EAGLE-3 aux layers [1, N/2-1, N-4] must be distinct"
    assert config.tie_word_embeddings is False
    assert config.num_attention_heads % config.num_key_value_heads == 0
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 50, 60, 70]])).logits
    assert logits.shape == (1, 4, config.vocab_size)
    assert torch.isfinite(logits).all()


def test_training_summary_reports_a_real_language_model():
    summary = json.loads((TARGET / "training_summary.json").read_text())
    for key in ("seed", "steps", "tokens_seen", "heldout_perplexity", "heldout_unigram_perplexity", "parameters"):
        assert key in summary, f"training_summary.json: missing {key!r}"
    # Well below the unigram baseline: the model learned context, not just token frequencies.
    assert summary["heldout_perplexity"] < 0.5 * summary["heldout_unigram_perplexity"]


def test_long_target_extends_the_target_and_predicts_late_positions():
    import torch
    from transformers import AutoModelForCausalLM

    long_dir = EXAMPLE / "target_long"
    assert sum(p.stat().st_size for p in long_dir.iterdir()) <= 20 * 2**20
    assert (long_dir / "tokenizer.json").read_bytes() == (TARGET / "tokenizer.json").read_bytes()
    summary = json.loads((long_dir / "training_summary.json").read_text())
    after = summary["heldout_after"]
    assert summary["seq_len"] >= 4096 and after["nll_4096_windows"] <= after["nll_256_windows"], after
    base = AutoModelForCausalLM.from_pretrained(TARGET, local_files_only=True).eval()
    extended = AutoModelForCausalLM.from_pretrained(long_dir, local_files_only=True).eval()
    assert extended.config.max_position_embeddings >= 4096
    assert extended.config.rope_parameters["rope_theta"] > base.config.rope_parameters["rope_theta"]
    # One held-out 4096-token window: past 3840 tokens of context the extended target predicts far
    # better than the 256-token target it started from (it learned to use long context).
    rows = read_jsonl(DATA / "heldout_plays.jsonl")
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(long_dir, local_files_only=True)(rows[0]["text"])["input_ids"][:4097]
    window = torch.tensor([ids])

    def late_nll(model):
        with torch.no_grad():
            logits = model(input_ids=window[:, :-1]).logits[0, 3840:]
        return torch.nn.functional.cross_entropy(logits, window[0, 3841:]).item()

    assert late_nll(extended) < late_nll(base) - 0.3


def test_tokenizer_has_special_tokens_and_a_chat_template(tokenizer):
    assert tokenizer.bos_token and tokenizer.eos_token and tokenizer.pad_token
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    conv = [
        {"role": "system", "content": "Speak in verse."},
        {"role": "user", "content": "Who's there?"},
        {"role": "assistant", "content": "Nay, answer me: stand, and unfold yourself."},
    ]
    text = tokenizer.apply_chat_template(conv, tokenize=False)
    assert text.startswith(tokenizer.bos_token)
    for message in conv:
        assert f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>" in text
    prompt = tokenizer.apply_chat_template(conv[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    assert tokenizer.decode(ids) == text  # the template's text round-trips through the byte-level BPE


def test_tokenizer_marks_assistant_tokens(tokenizer):
    conv = [{"role": "user", "content": "Who's there?"}, {"role": "assistant", "content": "Nay, answer me."}]
    out = tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(marked) == "Nay, answer me.<|im_end|>"


@pytest.mark.parametrize("name", DATA_FILES)
def test_data_files_parse_and_have_the_documented_shape(name):
    path = DATA / name
    assert path.stat().st_size < 3_000_000, f"{path}: over 3 MB"
    rows = read_jsonl(path)
    assert len(rows) >= 400
    for number, row in enumerate(rows, start=1):
        if "text" in name:
            assert set(row) == {"text"} and row["text"].strip(), f"{path}:{number}: expected {{'text': passage}}"
            continue
        conv = row["conversations"]
        assert set(row) == {"conversations"} and len(conv) >= 2 and len(conv) % 2 == 0, f"{path}:{number}"
        for i, message in enumerate(conv):
            assert message["role"] == ("user", "assistant")[i % 2], f"{path}:{number}: turn {i} role"
            assert message["content"].strip(), f"{path}:{number}: turn {i} is empty"


def test_train_and_heldout_share_no_passage():
    train = {row["text"] for row in read_jsonl(DATA / "train_text.jsonl")}
    heldout = {row["text"] for row in read_jsonl(DATA / "heldout_text.jsonl")}
    assert not train & heldout
    # Hamlet is held out: its prince's name never appears in training passages, and does in held-out ones.
    assert any("Hamlet" in text for text in heldout)
    assert not any("Elsinore" in text for text in train)


def test_heldout_plays_are_long_whole_documents_of_the_heldout_text(tokenizer):
    plays = [row["text"] for row in read_jsonl(DATA / "heldout_plays.jsonl")]
    assert len(plays) == 4 and all(set(r) == {"text"} for r in read_jsonl(DATA / "heldout_plays.jsonl"))
    # Long enough for the longest context the target can take (2048 positions).
    assert min(len(tokenizer(p)["input_ids"]) for p in plays) > 2048
    heldout = [row["text"] for row in read_jsonl(DATA / "heldout_text.jsonl")]
    assert all(any(passage.strip()[:200] in play for play in plays) for passage in heldout[:20])
    train = read_jsonl(DATA / "train_text.jsonl")
    assert not any(row["text"].strip()[:200] in play for row in train[:200] for play in plays)
