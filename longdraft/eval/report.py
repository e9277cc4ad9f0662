"""Acceptance statistics of a speculative-decoding run: JSON dict and a short text table.

τ (``acceptance_length``) = tokens emitted by verification steps / verification steps, bonus token
included (what vLLM and SGLang report). ``accept_rate_per_position[j]``: fraction of verification
steps whose draft ``j+1`` was accepted (so all drafts before it were too); τ = 1 + their sum.
``accept_rate_conditional[j]``: the same given that draft ``j`` was accepted (the paper's n-α).
"""

from __future__ import annotations

from dataclasses import dataclass

from longdraft.eval.speculative import GenerationResult


@dataclass
class PromptOutcome:
    prompt_id: str
    kind: str
    prompt_tokens: int
    result: GenerationResult
    matches_greedy: bool | None = None  # None: not checked


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def summarize(outcomes: list[PromptOutcome], num_draft_tokens: int) -> dict:
    k = num_draft_tokens
    accepted = [a for o in outcomes for a in o.result.accepted]
    steps = len(accepted)
    reached = [sum(a > j for a in accepted) for j in range(k)]  # steps whose draft j+1 was accepted
    conditional = [_ratio(reached[j], steps if j == 0 else reached[j - 1]) for j in range(k)]
    checked = [o.matches_greedy for o in outcomes if o.matches_greedy is not None]
    new_tokens = sum(o.result.step_tokens for o in outcomes)
    return {
        "acceptance_length": _ratio(new_tokens, steps),
        "accept_rate_per_position": [_ratio(r, steps) for r in reached],
        "accept_rate_conditional": conditional,
        "num_prompts": len(outcomes),
        "num_draft_tokens": k,
        "new_tokens": new_tokens,
        "verify_steps": steps,
        "output_tokens": sum(len(o.result.output) for o in outcomes),
        "prompt_tokens": sum(o.prompt_tokens for o in outcomes),
        "matches_greedy": None if not checked else all(checked),
        "per_prompt": [
            {
                "id": o.prompt_id,
                "kind": o.kind,
                "prompt_tokens": o.prompt_tokens,
                "output_tokens": len(o.result.output),
                "new_tokens": o.result.step_tokens,
                "verify_steps": o.result.verify_steps,
                "acceptance_length": _ratio(o.result.step_tokens, o.result.verify_steps),
                "matches_greedy": o.matches_greedy,
            }
            for o in outcomes
        ],
    }


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_table(report: dict, per_prompt: bool = True) -> str:
    k = report["num_draft_tokens"]
    lines = [
        f"chain speculative decoding, greedy, {k} draft tokens per step: {report['num_prompts']} prompts, "
        f"{report['prompt_tokens']} prompt tokens, {report['output_tokens']} output tokens",
        f"acceptance length tau = {_fmt(report['acceptance_length'], 3)}  "
        f"({report['new_tokens']} tokens / {report['verify_steps']} verification steps, bonus token included)",
        "position        " + " ".join(f"{j + 1:>6d}" for j in range(k)),
        "accept rate     " + " ".join(f"{_fmt(r, 3):>6s}" for r in report["accept_rate_per_position"]),
        "  given prev    " + " ".join(f"{_fmt(r, 3):>6s}" for r in report["accept_rate_conditional"]),
    ]
    if report["matches_greedy"] is not None:
        lines.append(f"output equals plain greedy decoding: {'yes' if report['matches_greedy'] else 'NO'}")
    if per_prompt:
        width = max([len("prompt")] + [len(p["id"]) for p in report["per_prompt"]])
        lines.append(f"{'prompt':<{width}}  kind  prompt_tok  out_tok  steps    tau")
        for p in report["per_prompt"]:
            lines.append(
                f"{p['id']:<{width}}  {p['kind']:<4}  {p['prompt_tokens']:>10d}  {p['output_tokens']:>7d}  "
                f"{p['verify_steps']:>5d}  {_fmt(p['acceptance_length']):>5s}"
            )
    return "\n".join(lines)
