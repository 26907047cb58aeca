"""The command line as scripts use it: names, JSON shapes, one-line errors, the scan's split used by train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, cli, fake_run, run_cli, solid

from tl_core.cli.main import main
from tl_core.data.scan import load_dataset
from tl_core.data.sources import DatasetSpec


def test_backbones_and_scan_json():
    rows = json.loads(cli("backbones", "--json").stdout)
    assert any(r["name"] == "resnet50" and r["acc1"] > 75 for r in rows)
    report = json.loads(cli("scan", "demo", "--json").stdout)
    assert report["n_images"] == 380 and report["problems"] == [] and len(report["classes"]) == 5


def test_train_predict_evaluate_export(tmp_path, with_real_weights):
    env = {"TORCH_HOME": str(with_real_weights)}
    out = cli("train", "demo", "--backbone", "mobilenet_v2", "--runs-dir", str(tmp_path), "--json", env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"run_dir", "best_val_accuracy", "epochs_completed", "seconds"} <= set(result)
    assert result["best_val_accuracy"] > 0.6 and result["epochs_completed"] == 1  # the feature head is fitted at once
    run = result["run_dir"]
    folder = Path(os.environ["TL_STUDIO_HOME"]) / "demo-v1" / "val" / "circle"
    preds = json.loads(cli("predict", run, str(folder), "--top-k", "2", "--json").stdout)
    assert len(preds) == 16 and all(len(p["top"]) == 2 for p in preds)
    assert sum(p["top"][0][0] == "circle" for p in preds) >= 10
    ev = json.loads(cli("evaluate", run, "--json").stdout)
    assert {"accuracy", "per_class", "confusion_matrix", "classes", "mistakes"} <= set(ev)
    assert ev["accuracy"] > 0.6
    listed = json.loads(cli("runs", "--runs-dir", str(tmp_path), "--json").stdout)
    assert listed[0]["status"] == "finished"
    exp = cli("export", run, str(tmp_path / "m.zip"), "--json")
    assert json.loads(exp.stdout)["checked"] is True


def test_errors_are_one_line_without_traceback():
    out = cli("train", "/no/such/folder", "--epochs", "1")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "does not exist" in out.stderr
    bad = cli("train", "demo", "--backbone", "not_a_net", "--epochs", "1")
    assert bad.returncode == 1 and "Unknown backbone" in bad.stderr and "Traceback" not in bad.stderr


def test_piped_output_is_plain_and_a_terminal_gets_bars(tmp_path):
    import pty

    piped = cli("scan", "demo")
    assert piped.returncode == 0 and piped.stderr == ""  # no bar, no message when not a terminal
    assert "\x1b" not in piped.stdout  # no colour or cursor codes in a file
    lines = piped.stdout.splitlines()
    assert lines[0].startswith("demo (shapes): 380 usable images") and lines[1].split() == ["split", "circle", "cross",
                                                                                            "square", "star", "triangle"]
    assert [line.split() for line in lines[3:5]] == [["train", *["60"] * 5], ["val", *["16"] * 5]]
    as_json = cli("runs", "--runs-dir", str(tmp_path), "--json")
    assert json.loads(as_json.stdout) == [] and as_json.stderr == ""

    primary, secondary = pty.openpty()  # a real terminal: rich draws its live bar on stderr
    proc = subprocess.run([sys.executable, "-m", "tl_core", "scan", "demo"], stdout=subprocess.PIPE, stderr=secondary,
                          cwd=ROOT, timeout=300, env={**os.environ, "COLUMNS": "120"})
    os.close(secondary)
    drawn = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(primary)
    assert proc.returncode == 0 and b"checking images" in drawn and b"380/380" in drawn


def test_cli_scan_lists_each_usable_files_split_and_train_uses_exactly_it(shapes_folder, tmp_path):
    def json_of(*args):
        out = subprocess.run([sys.executable, "-m", "tl_core", *args], capture_output=True, text=True, cwd=ROOT,
                             env=os.environ.copy(), timeout=300)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    report = json_of("scan", str(shapes_folder), "--val-fraction", "0.3", "--split-seed", "5", "--json")
    assert report["n_images"] == 30 and all(f["split"] in ("train", "val") for f in report["files"])
    result = json_of("train", str(shapes_folder), "--val-fraction", "0.3", "--split-seed", "5", "--backbone", "mobilenet_v3_small",
                 "--no-pretrained", "--strategy", "full", "--image-size", "48", "--epochs", "1", "--seed", "9",
                 "--runs-dir", str(tmp_path), "--json")
    split = json.loads((Path(result["run_dir"]) / "split.json").read_text())
    assert {sp: sorted(p for p, _ in items) for sp, items in split.items()} == {
        sp: sorted(f["path"] for f in report["files"] if f["split"] == sp) for sp in ("train", "val")}
    est = json_of("estimate", str(shapes_folder), "--backbone", "mobilenet_v3_small", "--strategy", "full", "--epochs", "1", "--json")
    assert est["seconds"] > 0 and "training" in est["phases"]
    assert load_dataset(DatasetSpec(str(shapes_folder), 0.3, 5)).counts() == report["counts"]


def test_scan_without_usable_images_fails_and_top_k_is_validated(tmp_path, capsys):
    junk = tmp_path / "junk"
    for c in ("a", "b"):
        (junk / c).mkdir(parents=True)
        (junk / c / "notes.txt").write_text("not an image")
    code, out, err = run_cli(capsys, "scan", str(junk))
    assert code == 1 and "no usable image" in err and "notes.txt" in out and "not iterable" not in err

    image = solid(tmp_path / "x.png", (10, 200, 10), (40, 40))
    run = fake_run(tmp_path / "runs", ["a", "b"])
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as e:
            main(["predict", str(run), str(image), "--top-k", bad])
        assert e.value.code == 2 and "--top-k" in capsys.readouterr().err
    code, out, _ = run_cli(capsys, "predict", str(run), str(image), "--top-k", "5", "--json")
    assert code == 0 and len(json.loads(out)[0]["top"]) == 2  # clamped to the run's classes


def test_evaluate_text_lists_unreadable_val_images(tmp_path, capsys):
    good = solid(tmp_path / "imgs" / "good.png", (200, 10, 10), (40, 40))
    corrupt = tmp_path / "imgs" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    missing = tmp_path / "imgs" / "gone.png"
    run = fake_run(tmp_path / "runs", ["a", "b"], val=[(str(good), 0), (str(corrupt), 1), (str(missing), 1)])
    code, out, _ = run_cli(capsys, "evaluate", str(run), "--device", "cpu")
    assert code == 0 and "unreadable images, not counted (2)" in out
    assert f"{corrupt}:" in out and f"{missing}:" in out
