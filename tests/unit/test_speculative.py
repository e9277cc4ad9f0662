"""Speculative evaluator: serving-style draft equals the training unroll, output equals target greedy, τ bounds."""

import json
import random
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from longdraft.attention.factory import make_attention_backend
from longdraft.config import config_from_dict
from longdraft.data.vocab import VocabMapping
from longdraft.eval.after_training import final_evaluation
from longdraft.eval.cli import main as eval_main
from longdraft.eval.draft_runner import DraftRunner
from longdraft.eval.evaluate import run_prompts
from longdraft.eval.prompts import load_prompts
from longdraft.eval.proposers import Eagle3Proposer
from longdraft.eval.report import summarize
from longdraft.eval.speculative import greedy_generate, speculative_generate
from longdraft.eval.target_runner import TargetRunner, stop_token_ids
from longdraft.model.draft import Eagle3Draft
from longdraft.model.draft_config import draft_config_from_target
from longdraft.testing.tiny_target import build_tiny_target, write_tiny_jsonl
from longdraft.train.export import export_draft, load_exported_draft
from tests.draft_factory import HIDDEN, VOCAB, tiny_draft
from tests.oracle_proposer import OracleProposer

K = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    target_dir = build_tiny_target(root / "target", initializer_range=0.3)
    data = write_tiny_jsonl(root / "data.jsonl", num_conversations=4, num_texts=2)
    model = AutoModelForCausalLM.from_pretrained(target_dir, local_files_only=True).float().eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(target_dir, local_files_only=True)
    prompts = load_prompts(data, tokenizer, num_prompts=6)
    runner = TargetRunner(model)
    yield SimpleNamespace(
        root=root,
        target_dir=target_dir,
        data=data,
        model=model,
        tokenizer=tokenizer,
        prompts=prompts,
        runner=runner,
        stop=stop_token_ids(model),
    )
    runner.close()


def _draft_for(model, seed: int, draft_vocab: int | None = None) -> Eagle3Draft:
    torch.manual_seed(seed)
    config = draft_config_from_target(model.config, draft_vocab)
    draft = Eagle3Draft(config, model.get_input_embeddings().weight.detach())
    if draft_vocab is not None:
        ids = torch.randperm(model.config.vocab_size, generator=torch.Generator().manual_seed(seed))[:draft_vocab]
        mapping = VocabMapping.from_draft_to_target(ids.sort().values, model.config.vocab_size)
        draft.set_vocab_mapping(mapping.d2t, mapping.t2d)
    return draft.eval()


def _plain_greedy(model, prompt, max_new_tokens, stop_ids):
    """Reference: no KV cache, the whole sequence through the target for every token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] in stop_ids:
                break
    return ids[len(prompt) :]


class NoisyOracle:
    """The target's greedy drafts with some corrupted, so every acceptance count 0..k occurs."""

    def __init__(self, model, seed=0, p=0.3):
        self.oracle, self.rng, self.p = OracleProposer(model), random.Random(seed), p
        self.vocab = model.config.vocab_size

    def reset(self):
        self.oracle.reset()

    def propose(self, tokens, aux, k):
        return [(d + 1) % self.vocab if self.rng.random() < self.p else d for d in self.oracle.propose(tokens, aux, k)]


@pytest.mark.parametrize("window", [None, 3])
def test_draft_runner_equals_training_unroll(window):
    """Cached serving steps reproduce the TTT unroll: step 0 causal, chain steps = diagonal keys; a
    windowed draft sees only the last ``window`` step-0 keys, as in training."""
    model, _ = tiny_draft(draft_vocab=30)
    model.config.sliding_window = window
    gen = torch.Generator().manual_seed(1)
    length, steps = 14, 4
    x = torch.randint(0, VOCAB, (length,), generator=gen)
    aux = torch.randn(length, 3 * HIDDEN, generator=gen)
    c = length - steps
    with torch.no_grad():
        feature, keys, values, per_step = model.fc(aux[:c])[None], [], [], []
        for k in range(steps):
            cos, sin = model.rope(feature, torch.arange(c)[None] + k)
            feature = model.layer_step(
                model.embed(x[k + 1 : k + 1 + c])[None],
                feature,
                cos,
                sin,
                keys,
                values,
                make_attention_backend("reference", window=window),
            )
            per_step.append(feature[0])
    runner = DraftRunner(model)
    for t in (0, 4, c - 2):
        runner.reset()
        half = (t + 1) // 2  # commit positions 0..t in two chunks (one when t == 0)
        chunks = [(a, b) for a, b in ((0, half), (half, t + 1)) if b > a]
        committed = torch.cat([runner.extend(x[a + 1 : b + 1], aux[a:b]) for a, b in chunks])
        torch.testing.assert_close(committed, per_step[0][: t + 1], atol=1e-5, rtol=1e-5)
        h = per_step[0][t]
        for k in range(1, steps):  # teacher-forced chain: step k reads x[t+k+1]
            h = runner.chain_step(int(x[t + k + 1]), h)
            torch.testing.assert_close(h, per_step[k][t], atol=1e-5, rtol=1e-5)
        runner.discard_chain()  # the chain must leave no trace in later committed entries
        nxt = runner.extend(x[t + 2 : t + 3], aux[t + 1 : t + 2])
        torch.testing.assert_close(nxt[0], per_step[0][t + 1], atol=1e-5, rtol=1e-5)


def test_target_runner_features_equal_training_features(env):
    """Aux features from the cached, incremental verify forwards equal the training prefill's."""
    from longdraft.engines.hf import HFTargetEngine

    ids = env.prompts[0].input_ids + env.prompts[4].input_ids
    training = HFTargetEngine(env.target_dir, device="cpu", dtype="fp32").prefill([ids])[0]
    first = env.runner.start(ids[:7])
    second = env.runner.forward(ids[7:12])
    env.runner.crop(10)  # drop 2 tokens, as after a partial acceptance, and run them again
    third = env.runner.forward(ids[10:])
    aux = torch.cat([first.aux, second.aux[:3], third.aux])
    torch.testing.assert_close(aux, training.aux_hidden.float(), atol=1e-4, rtol=1e-4)
    logits = training.last_hidden.float() @ env.model.get_output_embeddings().weight.T
    assert first.greedy + second.greedy[:3] + third.greedy == logits.argmax(-1).tolist()


@pytest.mark.timeout(60)
def test_output_equals_target_greedy(env):
    """Speculation never changes the text: random drafts (full and pruned vocab) and a noisy oracle."""
    max_new = 20
    proposers = {
        "draft": Eagle3Proposer(_draft_for(env.model, seed=0)),
        "pruned": Eagle3Proposer(_draft_for(env.model, seed=1, draft_vocab=200)),
        "noisy_oracle": NoisyOracle(env.model),
    }
    seen_accepts = set()
    for prompt in (env.prompts[0], env.prompts[1], env.prompts[4]):  # chat, chat, text
        expected = _plain_greedy(env.model, prompt.input_ids, max_new, env.stop)
        assert greedy_generate(env.runner, prompt.input_ids, max_new, env.stop) == expected
        for name, proposer in proposers.items():
            result = speculative_generate(env.runner, proposer, prompt.input_ids, max_new, K, env.stop)
            assert result.output == expected, f"{name}: {prompt.prompt_id}"
            if name == "noisy_oracle":
                seen_accepts.update(result.accepted)
    assert any(0 < a < K for a in seen_accepts), seen_accepts  # partial acceptances (cache crops) ran


def test_oracle_proposer_gives_k_plus_one(env):
    outcomes = run_prompts(env.runner, OracleProposer(env.model), env.prompts[2:5], 15, K, env.stop, check_greedy=True)
    report = summarize(outcomes, K)
    assert report["acceptance_length"] == K + 1
    assert report["accept_rate_per_position"] == [1.0] * K
    assert report["matches_greedy"] is True
    assert report["verify_steps"] > 0


def test_random_draft_gives_tau_near_one(env):
    outcomes = run_prompts(env.runner, Eagle3Proposer(_draft_for(env.model, seed=3)), env.prompts, 16, K, ())
    report = summarize(outcomes, K)
    assert 1.0 <= report["acceptance_length"] < 1.2
    assert report["verify_steps"] == len(env.prompts) * 15  # no stop ids: every step emits >= 1 token


def test_report_fields_and_identities(env):
    outcomes = run_prompts(env.runner, NoisyOracle(env.model, seed=5), env.prompts[:3], 12, K, env.stop)
    report = summarize(outcomes, K)
    tau, rates = report["acceptance_length"], report["accept_rate_per_position"]
    assert tau == pytest.approx(1 + sum(rates))  # τ = 1 + Σ_j P(draft j accepted)
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert report["num_prompts"] == 3
    assert report["new_tokens"] == sum(p["new_tokens"] for p in report["per_prompt"])
    assert report["verify_steps"] == sum(p["verify_steps"] for p in report["per_prompt"])
    assert report["new_tokens"] == report["verify_steps"] + sum(
        o.result.accepted.count(j) * j for o in outcomes for j in range(K + 1)
    )
    conditional = report["accept_rate_conditional"]
    assert conditional[0] == rates[0] and conditional[1] == pytest.approx(rates[1] / rates[0])


def test_prompts_from_conversations_and_text(env):
    chat = [p for p in env.prompts if p.kind == "chat"]
    text = [p for p in env.prompts if p.kind == "text"]
    assert len(chat) == 4 and len(text) == 2
    generation_prompt = env.tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for p in chat:
        assert p.input_ids[-len(generation_prompt) :] == generation_prompt
        assert env.tokenizer.decode(p.input_ids).count("<|im_start|>assistant") == 1
    rows = [json.loads(line) for line in env.data.read_text().splitlines()]
    full = env.tokenizer(rows[4]["text"])["input_ids"]
    assert text[0].input_ids == full[: len(full) // 2]


def test_proposer_with_wrong_count_is_refused(env):
    class Short:
        def reset(self):
            pass

        def propose(self, tokens, aux, k):
            return [0] * (k - 1)

    with pytest.raises(ValueError, match="expected 4 ids"):
        speculative_generate(env.runner, Short(), env.prompts[0].input_ids, 8, K, ())


def test_cli_json_and_table(env, capsys):
    export_draft(_draft_for(env.model, seed=0, draft_vocab=200), env.root / "draft")
    args = [
        "--target",
        str(env.target_dir),
        "--draft",
        str(env.root / "draft"),
        "--data",
        str(env.data),
        "--num-prompts",
        "3",
        "--max-new-tokens",
        "10",
        "--num-steps",
        "3",
        "--device",
        "cpu",
        "--check-greedy",
    ]
    assert eval_main(args + ["--json", "--out", str(env.root / "eval_cli.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    for field in ("acceptance_length", "accept_rate_per_position", "num_prompts", "new_tokens", "verify_steps"):
        assert field in report
    assert report["num_prompts"] == 3 and len(report["accept_rate_per_position"]) == 3
    assert report["matches_greedy"] is True
    assert json.loads((env.root / "eval_cli.json").read_text())["verify_steps"] == report["verify_steps"]
    assert eval_main(["--"] + args) == 0  # as `longdraft eval -- ...` passes it
    table = capsys.readouterr().out
    assert "acceptance length tau" in table and "accept rate" in table and "data.jsonl:1" in table


def test_draft_for_another_target_is_refused(env, tmp_path):
    model, _ = tiny_draft()  # vocab 50, not the target's 384
    export_draft(model, tmp_path / "other")
    with pytest.raises(ValueError, match="config.json: vocab_size=50"):
        eval_main(
            [
                "--target",
                str(env.target_dir),
                "--draft",
                str(tmp_path / "other"),
                "--data",
                str(env.data),
                "--device",
                "cpu",
            ]
        )


def test_final_evaluation_writes_real_and_simulated(env, tmp_path):
    final_dir = export_draft(_draft_for(env.model, seed=2), tmp_path / "final")
    assert load_exported_draft(final_dir, env.model.get_input_embeddings().weight).config.vocab_size == 384
    cfg = config_from_dict(
        {
            "data": {"train_path": str(env.data), "eval_path": str(env.data)},
            "model": {"target_path": str(env.target_dir)},
            "training": {"ttt_length": 3, "device": "cpu"},
            "eval": {"num_prompts": 2, "max_new_tokens": 8},
            "output": {"dir": str(tmp_path)},
        }
    )
    last_eval = {"sim_acc_len": 0.75, "acc_k": [0.5, 0.5, 0.0]}
    result = final_evaluation(cfg, SimpleNamespace(output_dir=tmp_path, final_dir=final_dir, last_eval=last_eval))
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["acceptance_length"]["simulated"] == 1.75
    assert saved["acceptance_length"]["real"] == saved["real"]["acceptance_length"] >= 1.0
    assert saved["simulated"]["cumulative_acc"] == [0.5, 0.25, 0.0]
    assert saved["real"]["num_prompts"] == 2 and saved["real"]["num_draft_tokens"] == 3
    assert saved["real"]["matches_greedy"] is True and saved["prompts_held_out"] is True
