"""``longdraft regenerate``: rows rewritten with the target's own greedy outputs, bad rows handled as
in training, and an interrupted run resumed without a row lost or repeated."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import longdraft.regenerate as regen
from longdraft.config import config_from_dict
from longdraft.data.errors import DataError
from longdraft.data.tokenize import render_chat
from longdraft.errors import UserError
from longdraft.eval.speculative import greedy_generate
from longdraft.eval.target_runner import TargetRunner, stop_token_ids
from longdraft.testing.tiny_target import build_tiny_target, tiny_rows

NEW = 12
SETTINGS = regen.RegenerateSettings(max_new_tokens=NEW, batch_size=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("regen")
    target = build_tiny_target(root / "target", initializer_range=0.3, seed=4)
    rows = tiny_rows(num_conversations=5, num_texts=3, seed=1)
    lines = [json.dumps(r) for r in rows]
    lines.insert(3, "{not json")  # a bad row at line 4
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root, target, rows


def _cfg(root, target, on_bad_row="skip"):
    return config_from_dict(
        {
            "data": {"train_path": str(root / "train.jsonl"), "on_bad_row": on_bad_row},
            "model": {"target_path": str(target)},
            "training": {"device": "cpu"},
            "output": {"dir": str(root / "out")},
        }
    )


def _expected(target, rows):
    """Each assistant turn / text half by plain greedy decoding, one row at a time."""
    model = AutoModelForCausalLM.from_pretrained(target, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(target, local_files_only=True)
    runner = TargetRunner(model)
    stops = stop_token_ids(model) | {tok.eos_token_id}
    out = []
    with torch.no_grad():
        for row in rows:
            if "text" in row:
                ids = tok(row["text"])["input_ids"]
                prompt = ids[: len(ids) // 2]
                new = greedy_generate(runner, prompt, min(NEW, len(ids) - len(prompt)), stops)
                out.append({"text": tok.decode(prompt + new, skip_special_tokens=True)})
                continue
            messages = [{"role": m["role"], "content": m["content"]} for m in row["conversations"]]
            for j, m in enumerate(messages):
                if m["role"] == "assistant":
                    text = render_chat(tok, messages[:j], add_generation_prompt=True)
                    new = greedy_generate(runner, tok(text, add_special_tokens=False)["input_ids"], NEW, stops)
                    m["content"] = tok.decode(new, skip_special_tokens=True).strip()
            out.append({"conversations": messages})
    runner.close()
    return out


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(240)
def test_greedy_rows_are_the_targets_own_continuations_and_a_resumed_run_repeats_nothing(setup, tmp_path, monkeypatch):
    root, target, rows = setup
    want = _expected(target, rows)
    full = tmp_path / "full.jsonl"
    summary = regen.regenerate(_cfg(root, target), full, SETTINGS, progress=False)
    assert summary["rows_read"] == 9 and summary["rows_written"] == 8 and summary["skipped"] == {"bad_json": 1}
    got = _read(full)
    assert got == want
    assert any(g != {"conversations": r["conversations"]} for g, r in zip(got, rows) if "conversations" in r)

    # Interrupted in its second batch, with half a line left behind; the rerun finishes the job.
    cut = tmp_path / "cut.jsonl"
    real, calls = regen.regenerate_rows, []

    def dies_second_time(batch, gen):
        calls.append(len(batch))
        if len(calls) == 2:
            with open(cut, "a") as f:
                f.write('{"conversations": [{"ro')
            raise KeyboardInterrupt
        return real(batch, gen)

    monkeypatch.setattr(regen, "regenerate_rows", dies_second_time)
    with pytest.raises(KeyboardInterrupt):
        regen.regenerate(_cfg(root, target), cut, SETTINGS, progress=False)
    assert len(cut.read_text().splitlines()) == 4  # batch 1 (3 rows) and the half line
    monkeypatch.setattr(regen, "regenerate_rows", real)
    resumed = regen.regenerate(_cfg(root, target), cut, SETTINGS, progress=False)
    assert _read(cut) == want and resumed["rows_written"] == 8 and resumed["skipped"] == {"bad_json": 1}


def test_a_bad_row_stops_the_run_with_its_line(setup, tmp_path):
    root, target, _ = setup
    with pytest.raises(DataError, match=r"train.jsonl:4: "):
        regen.regenerate(_cfg(root, target, "error"), tmp_path / "x.jsonl", SETTINGS, progress=False)


def test_an_existing_output_without_progress_is_not_overwritten(setup, tmp_path):
    root, target, _ = setup
    (tmp_path / "mine.jsonl").write_text("precious\n")
    with pytest.raises(UserError, match=r"mine.jsonl exists and has no mine.jsonl.progress.json"):
        regen.regenerate(_cfg(root, target), tmp_path / "mine.jsonl", SETTINGS, progress=False)
    assert (tmp_path / "mine.jsonl").read_text() == "precious\n"
