"""``longdraft bench loss`` at tiny dimensions: one row per precision, deviations measured against fp32."""

import json

from longdraft.bench.loss import main


def test_bench_loss_reports_each_precision_against_fp32(capsys):
    args = ["--hidden", "64", "--target-vocab", "512", "--draft-vocab", "128", "--rows", "48", "--ttt-length", "3"]
    assert main([*args, "--loss-chunk", "16", "--iters", "1", "--device", "cpu", "--json"]) == 0
    rows = {r["precision"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"fp32", "tf32", "bf16"}
    fp32, bf16 = rows["fp32"], rows["bf16"]
    assert fp32["loss_rel_dev"] == fp32["grad_lm_head_rel_dev"] == fp32["grad_x_rel_dev"] == 0.0
    assert fp32["mask_agreement"] == 1.0
    assert 0 < bf16["loss_rel_dev"] < 2e-3 and 0 < bf16["grad_lm_head_rel_dev"] < 5e-2
    assert bf16["resident_head_bytes"] * 2 == fp32["resident_head_bytes"]  # the frozen head lives in bf16
    for r in rows.values():
        assert r["mask_s_per_1024"] > 0 and r["loss_fwd_bwd_s_per_1024"] > 0
