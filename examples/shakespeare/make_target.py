"""Train the quick-start target: a byte-level BPE tokenizer and a small Llama, on the training plays only.

    python examples/shakespeare/make_target.py --seed 0 --out examples/shakespeare/target

1. Tokenizer: byte-level BPE (`tokenizers`, vocab 4096) trained on the training plays' text and dialogue,
   special tokens <|bos|> <|eos|> <|pad|> <|im_start|> <|im_end|>, a ChatML-style chat template.
2. Model: `LlamaForCausalLM`, 8 layers (EAGLE-3 aux layers [1, 3, 4] are distinct), hidden 128, 4 heads,
   2 KV heads, intermediate 512, untied embeddings. Trained on CPU with AdamW and a cosine schedule on
   random 256-token windows of a stream made of the training plays' text plus their dialogues rendered with
   the chat template (so the target also knows the chat format).
3. Held-out perplexity (mean token NLL over the held-out plays, `plays.HELDOUT_PLAYS`) and a unigram baseline
   go to `<out>/training_summary.json`; model (safetensors, fp32) and tokenizer are saved to `<out>`.

The run is deterministic given `--seed`, `--steps` and `--threads`. `--max-minutes` is only a guard: a run that
would pass it stops early and says so in the summary (`stopped_early`), which then is not reproducible.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import plays
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BOS, EOS, PAD, IM_START, IM_END = "<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]  # ids 0..4
# ChatML-style turns. {% generation %} marks assistant text for `return_assistant_tokens_mask=True`.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
            ),
        ]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def training_stream(tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """Token ids of the training plays (bos text eos) followed by their dialogues in chat format."""
    ids: list[int] = []
    for stem in plays.TRAIN_PLAYS:
        ids += tokenizer(plays.read_play(stem), verbose=False)["input_ids"] + [tokenizer.eos_token_id]
    for stem in plays.TRAIN_PLAYS:
        for conv in plays.conversations(stem):
            ids += tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def heldout_windows(tokenizer: PreTrainedTokenizerFast, seq_len: int, max_windows: int) -> torch.Tensor:
    """Non-overlapping windows (seq_len + 1 tokens) over the held-out plays' text; at most max_windows,
    evenly spaced (the evaluation has to fit the CPU budget)."""
    rows: list[torch.Tensor] = []
    for stem in plays.HELDOUT_PLAYS:
        ids = torch.tensor(tokenizer(plays.read_play(stem), verbose=False)["input_ids"] + [tokenizer.eos_token_id])
        n = (len(ids) - 1) // seq_len
        rows += [ids[i * seq_len : i * seq_len + seq_len + 1] for i in range(n)]
    if len(rows) > max_windows:
        rows = [rows[i * len(rows) // max_windows] for i in range(max_windows)]
    return torch.stack(rows)


def unigram_perplexity(train: torch.Tensor, heldout: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of an add-one unigram model of the training stream on the held-out targets."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return math.exp(-logp[heldout[:, 1:].reshape(-1)].mean().item())


def make_model(vocab_size: int, tokenizer: PreTrainedTokenizerFast, hidden: int, layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@torch.no_grad()
def mean_nll(model: LlamaForCausalLM, windows: torch.Tensor, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size]
        logits = model(input_ids=batch[:, :-1]).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].reshape(-1), reduction="sum")
        total, count = total + nll.item(), count + batch[:, 1:].numel()
    model.train()
    return total / count


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_on_windows(
    model,
    stream: torch.Tensor,
    steps: int,
    batch_size: int,
    seq_len: int,
    peak_lr: float,
    warmup: int,
    seed: int,
    deadline: float | None = None,
) -> tuple[list[float], bool]:
    """AdamW (weight decay 0.1 on matrices) with warmup + cosine on random ``seq_len`` windows of ``stream``.
    Returns the per-step losses and whether ``deadline`` (a ``time.time()``) stopped it early."""
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in model.parameters() if p.ndim >= 2], "weight_decay": 0.1},
            {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=peak_lr,
        betas=(0.9, 0.95),
    )
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    bar = tqdm(range(steps), desc="train", mininterval=5.0)
    for step in bar:
        if deadline is not None and time.time() > deadline:
            print(f"WARNING: the time guard was reached at step {step}/{steps}; stopping early")
            return losses, True
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr, warmup)
        offsets = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=gen)
        batch = torch.stack([stream[o : o + seq_len + 1] for o in offsets.tolist()])
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
    return losses, False


def train(args: argparse.Namespace) -> None:
    start = time.time()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_texts = [plays.read_play(s) for s in plays.TRAIN_PLAYS]
    train_texts += [m["content"] for s in plays.TRAIN_PLAYS for c in plays.conversations(s) for m in c]
    tokenizer = train_tokenizer(train_texts, args.vocab_size)
    vocab_size = len(tokenizer)
    stream = training_stream(tokenizer)
    heldout = heldout_windows(tokenizer, args.seq_len, args.eval_windows)
    print(f"tokenizer: {vocab_size} tokens; train stream {len(stream)} tokens; held-out {heldout.numel()} tokens")

    model = make_model(vocab_size, tokenizer, args.hidden, args.layers)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters")
    losses, stopped_early = train_on_windows(
        model,
        stream,
        args.steps,
        args.batch_size,
        args.seq_len,
        args.lr,
        max(1, args.steps // 20),
        args.seed,
        deadline=start + args.max_minutes * 60.0,
    )
    steps_done = len(losses)

    nll = mean_nll(model, heldout, args.batch_size)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    prompt = "King.\nHow is it that the clouds still hang on you?\n\nHam.\n"  # held-out: Hamlet, I.2
    prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        sample_ids = model.generate(prompt_ids, max_new_tokens=48)
    sample = tokenizer.decode(sample_ids[0, prompt_ids.shape[1] :], skip_special_tokens=True)
    summary = {
        "seed": args.seed,
        "steps": steps_done,
        "planned_steps": args.steps,
        "stopped_early": stopped_early,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "peak_lr": args.lr,
        "threads": args.threads,
        "tokens_seen": steps_done * args.batch_size * args.seq_len,
        "train_stream_tokens": len(stream),
        "train_loss_last20": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "heldout_plays": list(plays.HELDOUT_PLAYS),
        "heldout_tokens": heldout[:, 1:].numel(),
        "heldout_nll": nll,
        "heldout_perplexity": math.exp(nll),
        "heldout_unigram_perplexity": unigram_perplexity(stream, heldout, vocab_size),
        "greedy_sample": {"prompt": prompt, "continuation": sample},
        "parameters": n_params,
        "vocab_size": vocab_size,
        "wall_time_s": round(time.time() - start, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "target")
    parser.add_argument("--steps", type=int, default=200, help="fixed step count (the cosine schedule spans it)")
    parser.add_argument("--max-minutes", type=float, default=25.0, help="guard: stop early past this wall time")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--eval-windows", type=int, default=320, help="held-out windows of seq-len tokens to score")
    train(parser.parse_args())


if __name__ == "__main__":
    main()
