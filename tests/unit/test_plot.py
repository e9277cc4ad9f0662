"""Training plot: a real PNG of loss and acc_k, with held-out curves when metrics.jsonl has them."""

import json

import matplotlib  # noqa: F401  (longdraft[plot]; installed by scripts/install.sh)
import pytest

from longdraft.train.plot import plot_metrics


def _write_metrics(out_dir, steps=6, eval_every=0, k=3):
    lines = []
    for step in range(1, steps + 1):
        record = {"step": step, "loss": 5.0 / step, "acc_k": [min(1.0, 0.1 * step / (j + 1)) for j in range(k)]}
        if eval_every and step % eval_every == 0:
            record.update(
                eval_loss=6.0 / step,
                eval_acc_k=[0.05 * step] * k,
                eval_sim_acc_len=0.1 * step,
                eval_chain_acc_len=0.08 * step,
            )
        lines.append(json.dumps(record))
    (out_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_train_only(tmp_path):
    _write_metrics(tmp_path)
    path = plot_metrics(tmp_path)
    assert path == tmp_path / "metrics.png"
    assert _png_size(path) == (1000, 400)  # two panels: loss, acc_k


def test_plot_with_eval_curves(tmp_path):
    _write_metrics(tmp_path, eval_every=2)
    width, height = _png_size(plot_metrics(tmp_path))
    assert (width, height) == (1500, 400)  # a third panel: held-out simulated acceptance length


def test_plot_without_metrics_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_metrics(tmp_path)


def test_plot_shows_real_tau_of_final_eval(tmp_path):
    _write_metrics(tmp_path)  # no held-out records, but the final evaluation ran
    (tmp_path / "eval.json").write_text(json.dumps({"acceptance_length": {"real": 2.5, "simulated": None}}))
    assert _png_size(plot_metrics(tmp_path)) == (1500, 400)
