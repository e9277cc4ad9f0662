"""``longdraft regenerate CONFIG``: rewrite the training data with the target's own outputs.

A draft learns best from the distribution it will be asked to predict: the target's. Each
conversation row gets every assistant turn replaced, in order, by what the target generates after
the turns before it (earlier turns already regenerated); each text row keeps the first half of
its tokens and gets the rest generated. Rows are generated in batches (left-padded prefill), greedy
or sampled, with a progress bar.

Resumable: after every batch ``OUT.progress.json`` records the input rows done, the output's
length in bytes and the bad rows so far; a rerun truncates the output to that length and goes on
from there, so an interrupted run neither loses nor repeats a row. Bad rows stop the run with
``file:line`` and the reason, or with ``data.on_bad_row: skip`` are counted by reason.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from longdraft.cli_args import existing_dir, existing_file, output_file
from longdraft.config import Config
from longdraft.data.errors import DataError
from longdraft.data.rows import Conversation, PlainText, iter_jsonl
from longdraft.data.tokenize import render_chat
from longdraft.errors import UserError
from longdraft.target.spec import TargetSpec

TOO_LONG = "too_long_for_the_target"  # a reason kind of its own, beside those of data/errors.py


@dataclass
class RegenerateSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    batch_size: int = 8
    seed: int = 0


class Generator:
    """Batched generation with an HF target: left-padded prefill, then greedy or sampled tokens
    until each row's end-of-turn/EOS or its token budget."""

    def __init__(self, model: Any, tokenizer: Any, settings: RegenerateSettings, stop_ids: set[int]):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.stop_ids = sorted(stop_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self.max_positions = TargetSpec.from_config(model.config).max_position_embeddings

    def fits(self, prompt_tokens: int, budget: int) -> bool:
        return self.max_positions is None or prompt_tokens + budget <= self.max_positions

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], budgets: list[int]) -> list[list[int]]:
        s = self.settings
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, width - len(p) :] = torch.tensor(p)
            mask[b, width - len(p) :] = 1
        out = self.model.generate(
            input_ids=ids.to(self.model.device),
            attention_mask=mask.to(self.model.device),
            max_new_tokens=max(budgets),
            do_sample=s.temperature > 0,
            temperature=s.temperature or None,
            top_p=None,
            top_k=None,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
        )
        results = []
        for b, budget in enumerate(budgets):
            new = out[b, width:].tolist()[:budget]
            end = next((i for i, t in enumerate(new) if t in self.stop_ids), None)
            results.append(new if end is None else new[: end + 1])  # the stop token ends the turn
        return results


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def text_split(n: int, budget: int) -> tuple[int, int]:
    """(prompt tokens kept, tokens to generate) of a text row of ``n`` tokens: its first half, then
    as many new tokens as the half it replaces, at most ``budget``."""
    keep = max(1, n // 2)
    return keep, min(budget, max(1, n - keep))


def regenerate_rows(rows: list[Conversation | PlainText], gen: Generator) -> list[dict]:
    """New rows for a batch of parsed rows (conversations turn by turn, texts by their second half)."""
    tok, budget = gen.tokenizer, gen.settings.max_new_tokens
    out: list[dict | None] = [None] * len(rows)
    convs = {i: [dict(m) for m in r.messages] for i, r in enumerate(rows) if isinstance(r, Conversation)}
    turn = 0
    while True:  # the k-th assistant turn of every conversation that has one, as one batch
        jobs = []
        for i, messages in convs.items():
            at = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
            if turn < len(at):
                text = render_chat(tok, messages[: at[turn]], add_generation_prompt=True)
                jobs.append((i, at[turn], list(tok(text, add_special_tokens=False)["input_ids"])))
        if not jobs:
            break
        for (i, j, _), new in zip(jobs, gen.generate([p for _, _, p in jobs], [budget] * len(jobs))):
            convs[i][j]["content"] = _decode(tok, new).strip()
        turn += 1
    for i, messages in convs.items():
        out[i] = {"conversations": messages}
    texts = [
        (i, list(tok(r.text, add_special_tokens=True)["input_ids"]))
        for i, r in enumerate(rows)
        if isinstance(r, PlainText)
    ]
    if texts:
        splits = [text_split(len(ids), budget) for _, ids in texts]
        prompts = [ids[:keep] for (_, ids), (keep, _) in zip(texts, splits)]
        budgets = [new for _, new in splits]
        for (i, _), p, new in zip(texts, prompts, gen.generate(prompts, budgets)):
            out[i] = {"text": _decode(tok, p + new)}
    return [r for r in out if r is not None]


def _check_row(row, gen: Generator) -> None:
    """A bad row for regeneration: too long for the target to continue."""
    tok, budget = gen.tokenizer, gen.settings.max_new_tokens
    if isinstance(row, PlainText):
        n = len(tok(row.text, add_special_tokens=True)["input_ids"])
        if not gen.fits(*text_split(n, budget)):
            raise DataError(TOO_LONG, f"{n} tokens: more than the target's {gen.max_positions} positions")
        return
    text = render_chat(tok, row.messages, add_generation_prompt=False)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    if not gen.fits(n, budget):
        raise DataError(TOO_LONG, f"{n} tokens + {budget} new: more than the target's {gen.max_positions} positions")


def regenerate(cfg: Config, out_path: str | Path, settings: RegenerateSettings, progress: bool = True) -> dict:
    from transformers import AutoTokenizer

    from longdraft.device import resolve_device
    from longdraft.engines.hf import load_causal_lm
    from longdraft.eval.target_runner import stop_token_ids

    # Mistakes in what was passed are refused before the target is loaded.
    out = output_file(out_path, "--out")
    existing_file(cfg.data.train_path, "data.train_path")
    existing_dir(cfg.model.target_path, "model.target_path", ["config.json"], "a local Hugging Face model directory")
    state_path = out.with_name(out.name + ".progress.json")
    state = {"rows_done": 0, "bytes": 0, "written": 0, "skipped": {}}
    if state_path.is_file():
        state = json.loads(state_path.read_text())
    elif out.exists():
        raise UserError(f"{out} exists and has no {state_path.name} to resume from: remove it or choose another --out")
    torch.manual_seed(settings.seed)
    model = load_causal_lm(cfg.model.target_path, resolve_device(cfg.training.device), cfg.model.target_dtype)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.target_path, local_files_only=True)
    gen = Generator(model, tokenizer, settings, stop_token_ids(model) | {tokenizer.eos_token_id} - {None})
    skipped = Counter(state["skipped"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "ab") as f:
        f.truncate(state["bytes"])  # a batch cut short by an interruption is dropped, then redone
    batch: list = []
    done = state["rows_done"]
    rows = iter_jsonl(cfg.data.train_path)
    bar = tqdm(desc="regenerate", unit=" row", disable=not progress, initial=done)

    def flush() -> None:
        nonlocal batch
        if batch:
            new_rows = regenerate_rows(batch, gen)
            with open(out, "ab") as f:
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new_rows).encode())
            state["written"] += len(new_rows)
        state.update(rows_done=done, bytes=out.stat().st_size, skipped=dict(skipped))
        tmp = state_path.with_name(state_path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_path)
        batch = []

    for index, (location, row) in enumerate(rows):
        if index < state["rows_done"]:
            continue
        try:
            if isinstance(row, DataError):
                raise row
            _check_row(row, gen)
            batch.append(row)
        except DataError as e:
            if cfg.data.on_bad_row == "error":
                raise (e if e.location else e.at(location)) from None
            skipped[e.kind] += 1
        done = index + 1
        bar.update(1)
        if len(batch) >= settings.batch_size:
            flush()
    flush()
    bar.close()
    return {"out": str(out), "rows_read": done, "rows_written": state["written"], "skipped": dict(skipped)}
