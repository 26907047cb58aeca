"""`python -m tl_core ...`: every engine capability, headless. Errors are one line and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from tl_core.cli.terminal import Progress, print_table
from tl_core.config import EXPORT_FORMATS, LABEL_SEPARATOR
from tl_core.formats import count, figure, loss, percent, seconds
from tl_core.train.events import EventLog

if TYPE_CHECKING:
    from tl_core.train.runs import Run


def cmd_backbones(args) -> int:
    from tl_core.devices import pick_device
    from tl_core.measure import speed
    from tl_core.models import backbones

    device = pick_device(args.device)
    if args.measure:
        with Progress() as bar:
            speed.measure_many(args.names or speed.SHORTLIST, device,
                               lambda i, n, name: bar.bar("measuring backbones", i, n, name or "done"))
    speeds = speed.load_speeds(device)
    rows = []
    for b in backbones.list_backbones():
        row = b.to_dict()
        s = speeds.get(b.name)
        row["ms_per_image"] = s.ms_per_image if s else None
        row["images_per_s"] = s.images_per_s if s else None
        rows.append(row)
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows, ["name", "family", "params_m", "size_mb", "gflops", "acc1", "acc5", "input_size",
                           "ms_per_image", "images_per_s", "cached"],
                    {"ms_per_image": figure, "images_per_s": lambda v: figure(v, 0)})
    return 0


def _spec(args):
    from tl_core.data.sources import DatasetSpec

    return DatasetSpec(args.data, args.val_fraction, args.split_seed, args.label_separator)


def _scan(args):
    from tl_core.data.scan import scan

    with Progress() as bar:
        return scan(_spec(args), bar.callback("checking images"))


def cmd_scan(args) -> int:
    report = _scan(args)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    kind = f"{len(report.classes)} labels, several per picture" if report.multi_label else f"{len(report.classes)} classes"
    print(f"{report.name}: {report.n_images} usable images, {kind} ({report.split_source})")
    if report.classes:
        print_table([{"split": sp, **c} for sp, c in report.counts.items()], ["split", *report.classes])
    if report.problems:
        print(f"\n{count(len(report.problems), 'problem')}:")
        for p in report.problems[:50]:
            print(f"  {p.path}: {p.reason}")
    if not report.n_images:
        print(f"error: no usable image in {args.data}: see the problems above.", file=sys.stderr)
        return 1
    return 0


def cmd_estimate(args) -> int:
    from tl_core import plan
    from tl_core.config import from_arguments
    from tl_core.measure.estimate import estimate

    est = estimate(_scan(args), plan.check(from_arguments(args)))
    print(json.dumps(est.to_dict()) if args.json else est.describe())
    return 0


def _report(result, as_json: bool) -> int:
    from tl_core.train.distributed import is_main

    code = 0 if result.status in ("finished", "stopped") else 1
    if not is_main():  # under torchrun: one report, from rank 0
        return code
    if as_json:
        print(json.dumps({**result.to_dict(), "best_val_accuracy": result.best_val_accuracy}))
    else:
        why = f" ({result.stop_reason})" if result.stop_reason else ""
        balanced = result.best_val_balanced_accuracy
        balanced = f", balanced {percent(balanced)}" if balanced is not None else ""
        print(f"{result.status}{why}: best val {_accuracy_name(result.run_dir)} {percent(result.best_val_accuracy)}{balanced} "
              f"(epoch {result.best_epoch}) after {result.epochs_completed} epochs, {seconds(result.seconds)} -> {result.run_dir}")
    return code


def _listeners(args, bar: Progress) -> list:
    """The terminal, plus the JSON-lines event file a dashboard follows (`--events`; under torchrun, rank 0's only)."""
    return [bar] + ([EventLog(args.events)] if args.events and os.environ.get("RANK", "0") == "0" else [])


def _stop_on_sigterm() -> threading.Event:
    """SIGTERM (the dashboard's Stop) ends the run within a step, keeping its checkpoint: a resumable 'stopped'."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    return stop


def cmd_train(args) -> int:
    stop = _stop_on_sigterm()  # first: importing torch takes seconds, and a Stop may come meanwhile
    from tl_core.config import from_arguments
    from tl_core.train.trainer import train

    with Progress() as bar:
        result = train(_spec(args), from_arguments(args), args.runs_dir, _listeners(args, bar), stop)
    return _report(result, args.json)


def cmd_resume(args) -> int:
    stop = _stop_on_sigterm()
    from tl_core.train.trainer import resume

    with Progress() as bar:
        result = resume(args.run_dir, _listeners(args, bar), stop, epochs=args.epochs)
    return _report(result, args.json)


def cmd_predict(args) -> int:
    from tl_core.use.predict import Predictor, gather_inputs, predict_batch, write_csv

    inputs = gather_inputs(args.images)
    if not inputs.images:
        why = "; ".join(f"{s.file}: {s.reason}" for s in inputs.skipped[:5])
        more = f"; and {len(inputs.skipped) - 5} more" if len(inputs.skipped) > 5 else ""
        raise ValueError("No image files found in the given paths" + (f" (skipped {why}{more})." if why else "."))
    predictor = Predictor.from_run(args.run_dir, args.device)
    with Progress() as bar:
        batch = predict_batch(predictor, inputs, min(args.top_k, len(predictor.classes)), bar.callback("predicting"))
    threshold = predictor.threshold if args.unsure_below is None else args.unsure_below
    if args.csv:
        write_csv(batch.predictions, args.csv, threshold)
    if args.json:
        print(json.dumps(batch.to_dict(threshold)))
        return 0
    for p in batch.classified:
        why = p.reason(threshold)
        print(f"{p.file}: {p.answer(threshold)}  (" + ", ".join(f"{c} {percent(v)}" for c, v in p.top) + ")"
              + (f"  [{why}]" if why else ""))
    if batch.skipped:
        print(f"\nskipped, not classified ({count(len(batch.skipped), 'file')}):")
        for s in batch.skipped:
            print(f"  {s.file}: {s.reason}")
    return 0


def cmd_explain(args) -> int:
    from tl_core.use.explain import explain
    from tl_core.use.predict import Predictor

    e = explain(Predictor.from_run(args.run_dir, args.device), args.image, args.class_name)
    e.overlay().save(args.out)
    if args.json:
        print(json.dumps({"out": args.out, "class": e.class_name, "probability": e.probability}))
    else:
        print(f"{e.class_name} ({percent(e.probability)}): heat map written to {args.out}")
    return 0


def cmd_lr_find(args) -> int:
    """The finder on exactly the data, split and settings `train` would get from the same flags."""
    stop = _stop_on_sigterm()
    from tl_core.config import from_arguments
    from tl_core.train.lr_find import lr_find

    with Progress() as bar:
        result = lr_find(_spec(args), from_arguments(args), args.steps, args.start_lr, args.end_lr,
                         bar.callback("lr sweep"), stop=stop)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"suggested learning rate: {result.suggestion:.2e} ({result.reason}; swept {result.lrs[0]:.0e} .. "
              f"{result.lrs[-1]:.0e} in {len(result.lrs)} steps). Train with it: the same flags plus --lr {result.suggestion:.2g}")
    return 0


def cmd_evaluate(args) -> int:
    from tl_core.data.sources import DatasetSpec
    from tl_core.use.predict import evaluate

    data = DatasetSpec(args.data, separator=args.label_separator) if args.data else None
    with Progress() as bar:
        ev = evaluate(args.run_dir, args.split, args.device, bar.callback("evaluating"), data)
    if args.json:
        d = ev.to_dict()
        d.pop("predictions")
        print(json.dumps(d))
        return 0
    print(f"{ev.accuracy_name}: {ev.accuracy_label}")
    if ev.balanced_accuracy is not None:
        print(f"balanced accuracy: {percent(ev.balanced_accuracy)} (the mean of the per-class recall below)")
    if ev.calibration:
        print(ev.calibration)
    if ev.multi_label:
        return _print_label_scores(ev)
    if ev.split != "val":
        print(f"expected calibration error on {ev.split}: {percent(ev.ece)} raw, {percent(ev.ece_calibrated)} as predicted "
              f"(T = {ev.temperature:.3f})")
    print_table(ev.per_class, ["class", "precision", "recall", "f1", "support"], dict.fromkeys(("precision", "recall", "f1"), percent))
    print_table([{"true": c, **dict(zip(ev.classes, row))} for c, row in zip(ev.classes, ev.confusion_matrix)],
                ["true", *ev.classes], title="confusion matrix (rows: true, columns: predicted)")
    if ev.mistakes:
        print(f"\nmost confident mistakes ({len(ev.mistakes)}):")
        for m in ev.mistakes[:10]:
            print(f"  {m['file']}: {m['true']} predicted as {m['predicted']} ({percent(m['confidence'])})")
    if ev.skipped:
        print(f"\nunreadable images, not counted ({len(ev.skipped)}):")
        for s in ev.skipped:
            print(f"  {s['file']}: {s['reason']}")
    return 0


def _print_label_scores(ev) -> int:
    print(f"micro F1 {percent(ev.micro_f1)}, macro F1 {percent(ev.macro_f1)}, mAP {percent(ev.mean_average_precision)}")
    print_table(ev.per_class, ["class", "precision", "recall", "f1", "average_precision", "support", "threshold"],
                dict.fromkeys(("precision", "recall", "f1", "average_precision"), percent))
    if ev.mistakes:
        print(f"\npictures whose label set is wrong ({len(ev.mistakes)}):")
        for m in ev.mistakes[:10]:
            print(f"  {m['file']}: {m['true']} predicted as {m['predicted']}")
    for s in ev.skipped:
        print(f"  not counted: {s['file']}: {s['reason']}")
    return 0


def _accuracy_name(run_dir: str) -> str:
    from tl_core.train.runs import load_run

    return load_run(run_dir).targets.accuracy_name


def cmd_runs(args) -> int:
    from tl_core.train.runs import delete_run, list_runs, load_run

    if args.delete:
        for r in args.delete:
            delete_run(load_run(Path(args.runs_dir) / r if not Path(r).exists() else r))
            print(f"deleted {r}")
        return 0
    rows = [_run_row(r) for r in list_runs(args.runs_dir)]
    if args.json:
        print(json.dumps(rows))
    elif rows:
        print_table(rows, ["id", "status", "accuracy", "epochs_completed", "backbone", "strategy"])
        for row in rows:
            if "error" in row:
                print(f"{row['id']}: {row['error']}")
    else:
        print(f"no runs in {args.runs_dir}")
    return 0


def _run_row(run: Run) -> dict:
    """One line of `runs`; a run whose run.json is unreadable is shown as broken, with why."""
    from tl_core.train.runs import BROKEN

    if reason := run.broken:
        return {"id": run.id, "status": BROKEN, "error": reason}
    acc = run.accuracy()
    return {"id": run.id, **{k: run.summary.get(k) for k in ("status", "epochs_completed")},
            "best_val_accuracy": acc.value, "accuracy": acc.label(), "accuracy_checked": acc.checked,
            "backbone": run.info["config"]["backbone"], "strategy": run.info["config"]["strategy"]}


def cmd_export(args) -> int:
    from tl_core.use.export import describe_check, export, load_meta

    path = export(args.run_dir, args.output, args.format)
    meta = load_meta(path)
    if args.json:
        print(json.dumps({"export": str(path), "format": args.format, "checked": True, **meta["check"]}))
    else:
        print(f"wrote {path} ({args.format}, with MODEL_CARD.md); checked after writing: {describe_check(meta)}")
    return 0


def cmd_serve(args) -> int:
    from tl_core.use.serve import serve, token_for

    token_for(args.host, args.token)  # refuse an exposed address without a token before loading anything
    print(f"serving {args.run_dir} on http://{args.host}:{args.port} (POST /predict, GET /health, GET /openapi.json)",
          file=sys.stderr)
    serve(args.run_dir, args.host, args.port, args.token, args.device)
    return 0


def cmd_bench(args) -> int:
    from tl_core.config import DEFAULT_BACKBONE
    from tl_core.measure.bench import run_bench, run_cold, scale_point

    backbone = args.backbone or DEFAULT_BACKBONE
    if args.scale:
        rows = []
        for n in args.scale:
            rows.append(scale_point(n, backbone, args.device))
            print(f"{n} images: {rows[-1]}", file=sys.stderr)
        if args.json:
            print(json.dumps({"scale": rows}))
        return 0
    if args.cold:
        result = run_cold(args.data, backbone, args.epochs, args.device, args.modes, args.repeats)
    else:
        result = run_bench(args.data, backbone, args.epochs, args.device, args.modes, progress=Progress())
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_throughput(args) -> int:
    from dataclasses import asdict, replace

    from tl_core.devices import describe_device, pick_device
    from tl_core.measure import throughput
    from tl_core.models.backbones import check_name

    device = pick_device(args.device)
    models = args.models or throughput.MODELS
    for name in models:
        check_name(name)
    given = {k: getattr(args, k) for k in ("batch", "size", "steps", "repeats", "warmup", "optimizer", "infer_batch",
                                           "compile_backend")}
    settings = replace(throughput.defaults_for(device), compile=args.compile,
                       **{k: v for k, v in given.items() if v is not None}).validate()
    rows = []
    for name in models:
        print(f"measuring {name} on {device} ...", file=sys.stderr, flush=True)
        rows.append(throughput.measure(name, device, settings).to_dict())
        r = rows[-1]
        print(f"  train {r['train_images_per_s']} img/s (input pipeline x{r['pipeline_ratio']}), "
              f"inference {r['infer_images_per_s']} img/s, warm-up {r['warmup_s']} s", file=sys.stderr, flush=True)
    if args.json:
        import torch
        import torchvision

        print(json.dumps({"device": describe_device(device), "torch": torch.__version__,
                          "torchvision": torchvision.__version__, "settings": asdict(settings), "results": rows}))
    else:
        print_table(rows, ["model", "batch", "compile", "train_images_per_s", "compute_ms", "fwd_bwd_ms", "pipeline_ms",
                            "pipeline_ratio", "infer_images_per_s", "warmup_s"])
    return 0


def _data_arguments(p: argparse.ArgumentParser) -> None:
    """The dataset spec: the same three values the Dataset page chooses."""
    p.add_argument("data", help="folder, .zip, label .csv (image,labels columns), 'demo' or 'torchvision:NAME'")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share when there is no val/ folder")
    p.add_argument("--split-seed", type=int, default=0, help="seed of that random split (never the training seed)")
    p.add_argument("--label-separator", default=LABEL_SEPARATOR,
                   help="a label CSV's cells: labels joined by this make a multi-label dataset (default: ;)")


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command line (the usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {value})")
    return value


def cmd_compare(args) -> int:
    from tl_core.config import COMPARED_BACKBONES, from_arguments
    from tl_core.data.scan import load_dataset
    from tl_core.features.compare import compare, pareto_front, recommend

    with Progress() as bar:
        rows = compare(load_dataset(_spec(args)), args.backbones or list(COMPARED_BACKBONES), from_arguments(args), bar.bar)
    front, best = pareto_front(rows), recommend(rows)
    if args.json:
        print(json.dumps({"backbones": [r.to_dict() for r in rows], "pareto_front": front, "recommended": best}))
        return 0
    print_table([{**r.to_dict(), "pareto": r.name in front} for r in rows],
                ["name", "val_accuracy", "cv_accuracy", "ms_per_image", "size_mb", "seconds", "pareto", "error"],
                {"val_accuracy": percent, "cv_accuracy": percent, "seconds": seconds})
    print(f"\nrecommended: {best}" if best else "\nno backbone could be evaluated")
    return 0


def cmd_issues(args) -> int:
    from tl_core.config import from_arguments
    from tl_core.data.scan import load_dataset
    from tl_core.features.health import check_health

    config = from_arguments(args)
    with Progress() as bar:
        report = check_health(load_dataset(_spec(args)), config.backbone, image_size=config.image_size, fit=config.fit,
                              device=config.device, progress=bar.bar)
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    print(f"{report.n_images} images, {len(report.classes)} classes, embeddings of {report.backbone}")
    print(f"\nlikely mislabelled ({len(report.suspects)}):")
    print_table([vars(s) for s in report.suspects[:30]], ["path", "split", "given", "suggested", "quality", "flagged"],
                {"quality": loss})
    print(f"\nnear-duplicates ({len(report.duplicates)}):")
    for p in report.duplicates[:30]:
        flags = ", ".join(f for f, on in (("identical files", p.exact), ("cross-split", p.cross_split),
                                          ("cross-class", p.cross_class)) if on)
        print(f"  {p.similarity:.3f} ({p.found_by})  {p.a}  {p.b}" + (f"  [{flags}]" if flags else ""))
    print(f"\noutliers ({len(report.outliers)}):")
    for o in report.outliers[:30]:
        print(f"  z {o.z:.1f}  {o.path}")
    print(f"\n{report.balance.note}")
    return 0


def _embedding_args(p: argparse.ArgumentParser, func, options: list[str]) -> None:
    """What `compare` and `issues` share: the dataset, and the training options that decide its embeddings."""
    from tl_core.config import add_options

    _data_arguments(p)
    add_options(p, options)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=func)


def parser() -> argparse.ArgumentParser:
    from tl_core import paths
    from tl_core.config import BENCH_MODES, COMPARED_BACKBONES, OPTIMIZERS, add_arguments, add_options

    p = Parser(prog="python -m tl_core", description="TL Studio: transfer learning, headless.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("backbones", help="list backbones (ImageNet accuracy, size, measured speed)")
    b.add_argument("--measure", action="store_true", help="measure inference speed on this device")
    b.add_argument("--names", nargs="*", help="backbones to measure (default: a shortlist of small ones)")
    add_options(b, ["device"])
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backbones)

    s = sub.add_parser("scan", help="check a dataset: classes, usable images per split, problems")
    _data_arguments(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_scan)

    t = sub.add_parser("train", help="train a run (every option of the Train page)")
    _data_arguments(t)
    add_arguments(t)
    t.add_argument("--runs-dir", default=str(paths.runs_dir()))
    t.add_argument("--events", metavar="FILE", help="also append every training event to FILE as JSON lines")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_train)

    es = sub.add_parser("estimate", help="how long `train` would take here, from measured rates")
    _data_arguments(es)
    add_arguments(es)
    es.add_argument("--json", action="store_true")
    es.set_defaults(func=cmd_estimate)

    r = sub.add_parser("resume", help="continue a stopped or interrupted run")
    r.add_argument("run_dir")
    add_options(r, ["epochs"], epochs="new total number of epochs (default: the run's own)")
    r.add_argument("--events", metavar="FILE", help="also append every training event to FILE as JSON lines")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_resume)

    pr = sub.add_parser("predict", help="classify images with a trained run")
    pr.add_argument("run_dir")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top-k", type=_positive_int, default=3, help="classes per image (at most the run's)")
    pr.add_argument("--csv", metavar="OUT", help="also write one row per image (answer, top-k, error) to this CSV")
    pr.add_argument("--unsure-below", type=float, help="answer 'unsure' below this confidence (default: from validation)")
    add_options(pr, ["device"])
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="accuracy, per-class scores, confusion matrix, mistakes (label sets: F1, mAP)")
    e.add_argument("run_dir")
    e.add_argument("data", nargs="?", help="another dataset (folder, .zip, label .csv) to evaluate on, every picture "
                   "of it, labels matched to the run's by name (default: the run's own --split)")
    e.add_argument("--split", default="val", help="the run's own split to evaluate when no DATA is given")
    e.add_argument("--label-separator", default=LABEL_SEPARATOR, help="DATA's label CSV: labels joined by this")
    add_options(e, ["device"])
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    ru = sub.add_parser("runs", help="list (or delete) runs")
    ru.add_argument("--runs-dir", default=str(paths.runs_dir()))
    ru.add_argument("--delete", nargs="*", metavar="RUN")
    ru.add_argument("--json", action="store_true")
    ru.set_defaults(func=cmd_runs)

    ex = sub.add_parser("explain", help="Grad-CAM heat map: where in the image the evidence for a class is")
    ex.add_argument("run_dir")
    ex.add_argument("image")
    ex.add_argument("--out", default="heat.png", help="overlay image to write (PNG)")
    ex.add_argument("--class", dest="class_name", help="class to explain (default: the predicted one)")
    add_options(ex, ["device"])
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_explain)

    x = sub.add_parser("export", help="write a checked, self-contained model .zip")
    x.add_argument("run_dir")
    x.add_argument("output")
    x.add_argument("--format", default="safetensors", choices=EXPORT_FORMATS,
                   help="onnx: pictures in (uint8, any size; resize, crop, normalisation inside), probabilities out; "
                        "onnx-int8: the same, quantized")
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="HTTP prediction API for a run: POST /predict with multipart `file` fields")
    sv.add_argument("run_dir")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--host", default="127.0.0.1", help="another address than loopback needs a token")
    sv.add_argument("--token", help="required as `Authorization: Bearer <token>` (default: $TL_STUDIO_API_TOKEN)")
    add_options(sv, ["device"])
    sv.set_defaults(func=cmd_serve)

    lf = sub.add_parser("lr-find", help="learning-rate finder: a short run of `train` with the same flags, the rate rising")
    _data_arguments(lf)
    add_arguments(lf)
    lf.add_argument("--steps", type=_positive_int, default=100, help="training steps of the sweep (at least 5)")
    lf.add_argument("--start-lr", type=float, default=1e-6, help="first rate of the sweep")
    lf.add_argument("--end-lr", type=float, default=1.0, help="last rate of the sweep (it ends sooner if the loss diverges)")
    lf.add_argument("--json", action="store_true")
    lf.set_defaults(func=cmd_lr_find)

    be = sub.add_parser("bench", help="TL Studio vs the copied tutorial loop, side by side")
    be.add_argument("data", nargs="?", help="default: ../shared/data ants vs bees when present, else demo")
    add_options(be, ["backbone", "device", "epochs"], epochs="epochs of each side (default: 5)")
    be.set_defaults(epochs=5)
    be.add_argument("--modes", nargs="+", default=list(BENCH_MODES), choices=BENCH_MODES)
    be.add_argument("--cold", action="store_true",
                    help="each side as a whole process from empty caches; import and work timed apart")
    be.add_argument("--repeats", type=_positive_int, default=3, help="with --cold: runs per side (medians reported)")
    be.add_argument("--scale", type=_positive_int, nargs="+", metavar="N", help="feature path time/memory at N synthetic images")
    be.add_argument("--json", action="store_true")
    be.set_defaults(func=cmd_bench)

    tp = sub.add_parser("throughput", help="training and inference images/s with synthetic input (random weights)")
    tp.add_argument("--models", nargs="+", help="backbones to measure (default: ResNet-18, ResNet-50 and the default backbone)")
    tp.add_argument("--batch", type=int, help="training batch (default 256 on a GPU, 16 on CPU)")
    tp.add_argument("--infer-batch", type=int, help="inference batch (default 256 on a GPU, 32 on CPU)")
    tp.add_argument("--size", type=int, help="image side in pixels (default 224)")
    tp.add_argument("--steps", type=int, help="steps per timed repeat")
    tp.add_argument("--repeats", type=int, help="timed repeats (the median is reported)")
    tp.add_argument("--warmup", type=int, help="untimed steps first (torch.compile happens here)")
    tp.add_argument("--optimizer", choices=OPTIMIZERS)
    tp.add_argument("--compile", action="store_true", help="torch.compile the model")
    tp.add_argument("--compile-backend", help="torch.compile backend (default inductor)")
    add_options(tp, ["device"])
    tp.add_argument("--json", action="store_true")
    tp.set_defaults(func=cmd_throughput)


    co = sub.add_parser("compare", help="your-data accuracy of backbones (fitted head on cached embeddings) vs latency")
    co.add_argument("--backbones", nargs="+", help=f"backbones to weigh (default: {', '.join(COMPARED_BACKBONES)})")
    _embedding_args(co, cmd_compare, ["image_size", "fit", "device", "augment", "feature_views", "seed"])

    iss = sub.add_parser("issues", help="likely mislabelled images, near-duplicates, outliers, class imbalance")
    _embedding_args(iss, cmd_issues, ["backbone", "image_size", "fit", "device"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line, no traceback
        suggestion = getattr(e, "suggestion", None)
        print(f"error: {e}" + (f" ({suggestion})" if suggestion else ""), file=sys.stderr)
        return 1
