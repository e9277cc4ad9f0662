"""The shared-output check's own logic, on this one filesystem: a rank whose marker lands in a directory
the driver does not read is named with its node, and the refusal names the key to fix."""

from pathlib import Path

from longdraft.config import config_from_dict
from longdraft.pipeline.shared_output import refusal, shared_root, unseen_marks, write_marker


def _cfg(out: Path, checkpoint_dir: Path | None = None):
    output = {"dir": str(out), "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None}
    return config_from_dict({"data": {"train_path": "t.jsonl"}, "model": {"target_path": "m"}, "output": output})


def test_marks_another_node_wrote_elsewhere_are_named(tmp_path):
    driver_view = _cfg(tmp_path / "out")
    other_node_view = _cfg(tmp_path / "elsewhere" / "out")  # the same path, as a node without the share sees it
    marks = [
        write_marker(driver_view, "tok", 0, "10.0.0.1"),
        write_marker(other_node_view, "tok", 1, "10.0.0.2"),
        write_marker(other_node_view, "tok", 2, "10.0.0.2"),
    ]
    unseen = unseen_marks(driver_view, "tok", marks, wait_s=0.0)
    assert [m["rank"] for m in unseen] == [1, 2]
    line = refusal(driver_view, unseen, "10.0.0.1")
    assert "\n" not in line and line.startswith(f"output.dir = {tmp_path / 'out'} is not shared")
    assert "node 10.0.0.2 (trainer ranks 1, 2)" in line and "10.0.0.1 (trainer" not in line
    assert "output.dir must be shared storage (or set output.checkpoint_dir" in line
    assert unseen_marks(driver_view, "other-run", marks[:1], wait_s=0.0) == marks[:1]  # a marker of another run


def test_checkpoint_dir_is_where_the_markers_go_and_is_named(tmp_path):
    cfg = _cfg(tmp_path / "out", tmp_path / "nfs")
    assert shared_root(cfg) == tmp_path / "nfs"
    mark = write_marker(cfg, "tok", 0, "10.0.0.1")
    assert unseen_marks(cfg, "tok", [mark], wait_s=0.0) == []
    assert not (tmp_path / "out").exists()
    line = refusal(cfg, [{"rank": 3, "node_ip": "10.0.0.4", "error": "PermissionError: denied"}], "10.0.0.1")
    assert line.startswith(f"output.checkpoint_dir = {tmp_path / 'nfs'}") and "rank 3: PermissionError" in line
