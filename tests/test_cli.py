"""The command line as scripts use it: names, JSON shapes, one-line errors, the scan's split used by train."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import ROOT, cli, fake_run, run_cli, solid

from tl_core import config
from tl_core.cli.main import main, parser
from tl_core.config import from_arguments, options
from tl_core.data.scan import load_dataset
from tl_core.data.sources import DatasetSpec, uploads_dir
from tl_core.formats import NOT_MEASURED


def test_backbones_and_scan_json():
    rows = json.loads(cli("backbones", "--json").stdout)
    assert any(r["name"] == "resnet50" and r["acc1"] > 75 for r in rows)
    unmeasured = next(r["name"] for r in rows if r["ms_per_image"] is None)  # null in JSON ...
    table = cli("backbones").stdout.splitlines()
    cells = next(line.split() for line in table if line.startswith(unmeasured + " "))
    assert cells[-3:-1] == [NOT_MEASURED, NOT_MEASURED] and "None" not in "".join(table)  # ... the page's mark in text
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
    preds = json.loads(cli("predict", run, str(folder), "--top-k", "2", "--json").stdout)["predictions"]
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
    assert code == 0 and len(json.loads(out)["predictions"][0]["top"]) == 2  # clamped to the run's classes


def test_cli_messages_never_point_to_a_page(shapes_folder, home, capsys):
    """A dropped image is listed by `scan` with its reason, in words that make sense on a command line."""
    from tl_core.data.overrides import DROP, set_override
    from tl_core.data.sources import from_folder

    ds = from_folder(shapes_folder)
    set_override(ds, ds.samples[0].path, DROP)
    code, out, err = run_cli(capsys, "scan", str(shapes_folder))
    dropped = next(line for line in out.splitlines() if line.strip().startswith(ds.samples[0].path))
    assert code == 0 and "dropped by you" in dropped and "page" not in out + err
    assert re.search(r"^[2-9] problems:$", out, re.M) and "(s)" not in out


def test_evaluate_text_lists_unreadable_val_images(tmp_path, capsys):
    good = solid(tmp_path / "imgs" / "good.png", (200, 10, 10), (40, 40))
    corrupt = tmp_path / "imgs" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    missing = tmp_path / "imgs" / "gone.png"
    run = fake_run(tmp_path / "runs", ["a", "b"], val=[(str(good), 0), (str(corrupt), 1), (str(missing), 1)])
    code, out, _ = run_cli(capsys, "evaluate", str(run), "--device", "cpu")
    assert code == 0 and "unreadable images, not counted (2)" in out
    assert f"{corrupt}:" in out and f"{missing}:" in out


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def refused(capsys, *argv: str) -> str:
    """The one line a refused command line prints (argparse's exit status 2, no usage block, no traceback)."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_every_commands_options_come_from_the_declarations():
    """A flag named like a training option is that option in every command: its choices and its bounds; every
    command that takes a device offers exactly config.DEVICES; no backbone name is the parser's own."""
    declared = {name: (kind, opt) for name, kind, opt, _ in options()}
    with_device = set()
    for command, sub in subcommands().items():
        for action in sub._actions:
            name = action.dest
            if name not in declared or not action.option_strings or action.option_strings[0] != "--" + name.replace("_", "-"):
                continue
            kind, opt = declared[name]
            with_device |= {command} if name == "device" else set()
            assert tuple(action.choices or ()) == (opt.choices or ()), (command, name)
            assert name != "backbone" or action.default is None, command  # the declared default applies
            if opt.low is not None:
                for outside in (opt.low - 1, opt.high * 10):
                    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"between {opt.low:g} and {opt.high:g}")):
                        action.type(str(kind(outside)))
                assert action.type(str(kind(opt.high))) == opt.high
    assert with_device == set(subcommands()) - {"scan", "runs", "export", "resume"}
    issues = parser().parse_args(["issues", "demo"])
    assert from_arguments(issues).backbone == config.DEFAULT_BACKBONE


def test_out_of_bound_values_are_one_line_before_any_work(capsys):
    for command in ("compare", "issues"):
        for size in ("1", "100000"):
            err = refused(capsys, command, "demo", "--image-size", size)
            assert f"--image-size: must be between 16 and 1024 (got {size})" in err
    assert "invalid choice: 'gpu'" in refused(capsys, "issues", "demo", "--device", "gpu")
    assert "--augment: invalid choice" in refused(capsys, "compare", "demo", "--augment", "wild")
    assert "--seed: 'x' is not a whole number" in refused(capsys, "compare", "demo", "--seed", "x")
    assert "--lr: must be between" in refused(capsys, "train", "demo", "--lr", "nan")


def test_resume_refuses_zero_epochs(capsys, tmp_path):
    err = refused(capsys, "resume", str(tmp_path), "--epochs", "0")
    assert "--epochs: must be between 1 and 500 (got 0)" in err


def test_tables_print_class_names_as_named(capsys, tmp_path):
    """Rich reads "[x]" as markup and drops it; class names are the user's and print exactly."""
    for name in ("[x]", "[red]y", "plain"):
        for i in range(3):
            solid(tmp_path / "data" / name / f"{i}.png", (40 * i, 90, 200 - 50 * i))
    assert main(["scan", str(tmp_path / "data"), "--val-fraction", "0.34"]) == 0
    header = capsys.readouterr().out.splitlines()[1].split()
    assert header == ["split", "[red]y", "[x]", "plain"]


def test_uploads_limit_that_is_not_a_number_is_one_line(capsys, tmp_path, monkeypatch):
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for c in ("a", "b"):
            z.write(solid(tmp_path / c / "0.png", (200, 10, 10)), f"{c}/0.png")
    monkeypatch.setenv("TL_STUDIO_UPLOADS_GB", "abc")
    assert main(["scan", str(archive)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TL_STUDIO_UPLOADS_GB" in err and "'abc'" in err
    assert not any(p.name.startswith("set-") for p in uploads_dir().glob("*"))  # refused before unpacking


def test_explain_names_the_classes_of_the_run(capsys, tmp_path, shapes_folder):
    assert main(["train", str(shapes_folder), "--backbone", "mobilenet_v3_small", "--no-pretrained", "--strategy", "full",
                 "--epochs", "1", "--image-size", "48", "--runs-dir", str(tmp_path), "--json"]) == 0
    run = json.loads(capsys.readouterr().out.splitlines()[-1])["run_dir"]
    image = str(shapes_folder / "circle" / "0.png")
    assert main(["explain", run, image, "--class", "nosuch", "--out", str(tmp_path / "h.png")]) == 1
    err = capsys.readouterr().err
    assert err == "error: The run has no class 'nosuch'; its classes are 'circle', 'square', 'triangle'.\n"
    assert main(["explain", run, image, "--class", "square", "--out", str(tmp_path / "h.png")]) == 0
    assert capsys.readouterr().out.startswith("square (") and (tmp_path / "h.png").exists()


def test_fit_flag_round_trips_through_train_compare_and_issues(capsys):
    """`--fit letterbox` is the declared option: the same flag on every command whose pixels it decides, back into
    the config a job's command line is made from, and a fit nobody declared is one argparse line."""
    for command in ("train", "estimate", "lr-find", "compare", "issues"):
        args = parser().parse_args([command, "demo", "--fit", "letterbox"])
        assert from_arguments(args).fit == "letterbox", command
        assert from_arguments(parser().parse_args([command, "demo"])).fit == "crop", command
    box = config.TrainConfig(fit="letterbox")
    assert "--fit=letterbox" in config.to_arguments(box)
    assert from_arguments(parser().parse_args(["train", "demo", *config.to_arguments(box)])) == box
    err = refused(capsys, "train", "demo", "--fit", "stretch")
    assert "--fit: invalid choice: 'stretch'" in err and "letterbox" in err
