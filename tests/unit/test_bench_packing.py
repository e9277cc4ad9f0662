"""``longdraft bench packing``: the length mix it ships, and a tiny one-device run."""

import json
import statistics

from longdraft.bench.packing import length_mix, main


def test_length_mix_is_the_documented_one():
    lengths = length_mix(2000, seed=0)
    long = [n for n in lengths if n >= 16384]
    assert len(long) == 100 and all(n <= 65536 for n in long)  # 5 % between 16K and 64K
    assert 1300 < statistics.median([n for n in lengths if n < 16384]) < 1700  # median 1,500
    assert length_mix(2000, seed=0) == lengths and length_mix(2000, seed=1) != lengths
    assert max(length_mix(2000, seed=0, scale=1 / 16)) <= 4096


def test_one_device_packing_computes_no_padding(capsys):
    args = ["--sp", "1", "--batch", "12", "--steps", "1", "--warmup", "0", "--scale", "0.01", "--ttt", "2"]
    assert (
        main(
            [*args, "--hidden", "32", "--intermediate", "64", "--target-vocab", "256", "--draft-vocab", "64", "--json"]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    unpacked, packed = out["rows"]
    assert (unpacked["mode"], packed["mode"]) == ("unpacked", "packed")
    assert packed["useful_fraction"] == 1.0 > unpacked["useful_fraction"]  # stacking pads to the longest
    assert packed["micro_batches"] < unpacked["micro_batches"] and packed["speedup"] > 0
