"""`python -m tl_core bench`: TL Studio's trainer against the loop everyone copies, same data, device, backbone.

The reference is written out plainly here, exactly as the widely copied tutorials do it: ImageFolder + PIL
transforms decoded every epoch, DataLoader(batch_size=32, num_workers=0), frozen pretrained backbone
(requires_grad=False) with a new final Linear, Adam, model.train() then model.eval() each epoch.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torchvision import datasets, models
from torchvision import transforms as T

from tl_core.config import TrainConfig
from tl_core.devices import describe_device, pick_device
from tl_core.formats import percent, seconds
from tl_core.models import backbones
from tl_core.train.events import EpochEnded, PhaseStarted

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
HYMENOPTERA = SHARED / "datasets" / "hymenoptera_data"
SHARED_WEIGHTS = {"mobilenet_v2-b0353104.pth": SHARED / "weights" / "mobilenet_v2_qnnpack_dequantized-93d7100e.pth"}


def link_shared_weights(torch_home: Path) -> None:
    """Make ../shared/data's real MobileNetV2 file visible to torchvision's own weights API (offline)."""
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    for name, src in SHARED_WEIGHTS.items():
        if src.exists() and not (ckpt / name).exists():
            (ckpt / name).symlink_to(src)


def prepare_weights() -> None:
    """Without a TORCH_HOME of one's own, use a private one holding ../shared/data's weights (when present)."""
    if "TORCH_HOME" not in os.environ and SHARED.exists():
        os.environ["TORCH_HOME"] = str(Path(tempfile.gettempdir()) / "tl_studio_torch_home")
    link_shared_weights(Path(torch.hub.get_dir()).parent)


class PeakMemory:
    """Peak resident memory (CPU) or peak allocated memory (CUDA) while the block runs, above its start."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self.rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mb(self) -> float:
        return round((self.peak - self.base) / 2**20, 1)


def reference_loop(root: Path, backbone: str, epochs: int, device: torch.device, full: bool,
                   pretrained: bool, log=print, lr: float = 1e-3) -> dict:
    """The copied tutorial, end to end: model load, decoding and validation all inside the wall time.

    `lr` 1e-3 is Adam's default (what the tutorials use); 1e-4 is the fairer rate for fine-tuning every layer."""
    t0 = time.perf_counter()
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    train_tf = T.Compose([T.Resize((224, 224)), T.RandomAffine(0, shear=10, scale=(0.8, 1.2)),
                          T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    val_tf = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize(mean, std)])
    train_ds = datasets.ImageFolder(root / "train", train_tf)
    val_ds = datasets.ImageFolder(root / "val", val_tf)
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=32, shuffle=True, num_workers=0)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=32, shuffle=False, num_workers=0)
    weights = backbones.pick_weights(backbone) if pretrained else None
    model = models.get_model(backbone, weights=weights)
    for p in model.parameters():
        p.requires_grad = full
    backbones.replace_head(model, len(train_ds.classes))  # the new final Linear (trainable)
    model = model.to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    criterion = nn.CrossEntropyLoss()
    accs = []
    for epoch in range(epochs):
        model.train()
        for x, y in train_dl:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_dl:
                correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
        accs.append(correct / len(val_ds))
        log(f"  reference epoch {epoch + 1}/{epochs}: val acc {percent(accs[-1])}")
    wall = time.perf_counter() - t0
    return {"seconds": round(wall, 2), "images_per_s": round(len(train_ds) * epochs / wall, 1),
            "best_val_accuracy": round(max(accs), 4), "final_val_accuracy": round(accs[-1], 4),
            "n_train": len(train_ds), "n_val": len(val_ds)}


@contextmanager
def cold_cache():
    """TL Studio's caches in a fresh folder: the embedding cache starts empty, so timings are honest."""
    old = os.environ.get("TL_STUDIO_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TL_STUDIO_HOME"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("TL_STUDIO_HOME", None)
            else:
                os.environ["TL_STUDIO_HOME"] = old


def studio_run(root: Path, config: TrainConfig, log=print) -> dict:
    from tl_core.train.runs import load_run
    from tl_core.train.trainer import train

    marks: list[tuple[str, float]] = []

    def listen(e) -> None:
        if isinstance(e, PhaseStarted) and e.phase != "weights":
            marks.append((e.phase, time.perf_counter()))
        elif isinstance(e, EpochEnded):
            log(f"  TL Studio epoch {e.row.epoch}/{e.epochs}: val acc {percent(e.row.val_acc)} ({seconds(e.row.epoch_seconds)})")

    with tempfile.TemporaryDirectory() as runs, cold_cache():
        t0 = time.perf_counter()
        marks.append(("scan and weights", t0))
        result = train(str(root), config, runs, [listen])
        wall = time.perf_counter() - t0
        marks.append(("end", t0 + wall))
        metrics = load_run(result.run_dir).metrics()
        n_train = len(load_run(result.run_dir).split("train"))
    return {"seconds": round(wall, 2), "images_per_s": round(n_train * result.epochs_completed / wall, 1),
            "best_val_accuracy": round(result.best_val_accuracy, 4),
            "final_val_accuracy": round(metrics[-1]["val_acc"], 4), "epochs": result.epochs_completed,
            "phases": {name: round(marks[i + 1][1] - t, 2) for i, (name, t) in enumerate(marks[:-1])}}


def probe_side(root: Path, backbone: str, device: torch.device) -> dict:
    """The plain linear probe the issue measures against: frozen features of each whole image resized to the crop
    (no cropping, no augmentation), multinomial logistic regression by L-BFGS, L2 chosen by 5-fold cross-validation
    on the training split only. TL Studio's feature path must never be below it."""
    from tl_core.data.scan import load_dataset
    from tl_core.features.frozen import FrozenBackbone, embed_dataset
    from tl_core.features.probe import fit_head, predict_proba

    with cold_cache():
        t0 = time.perf_counter()
        ds = load_dataset(str(root))
        frozen = FrozenBackbone.load(backbone, device=device)
        p = frozen.prep
        frozen.prep = backbones.Preprocessing(p.crop, p.crop, p.mean, p.std)
        parts = embed_dataset(ds, frozen, 1, "none")
        head = fit_head(parts["train"].x, parts["train"].labels, len(ds.classes))
        accuracy = (predict_proba(head, parts["val"].x).argmax(1) == parts["val"].labels).float().mean().item()
        wall = time.perf_counter() - t0
    return {"seconds": round(wall, 2), "images_per_s": round(len(parts["train"].labels) / wall, 1),
            "best_val_accuracy": round(accuracy, 4), "final_val_accuracy": round(accuracy, 4), "l2": head.l2}


def default_data() -> Path:
    """Ants vs bees when ../shared/data is there (its real MobileNetV2 weights come along), else the demo set."""
    if HYMENOPTERA.exists():
        return HYMENOPTERA
    from tl_core.data.demo import demo_root

    return demo_root()


REFERENCE_FINETUNE_LR = 1e-4  # Adam at 1e-4: the fairer full fine-tuning reference (Adam's default 1e-3 overshoots)


def sides(mode: str, pretrained: bool) -> list[str]:
    """The rows of one mode: the tutorial loop(s), the linear probe (pretrained features only), TL Studio."""
    if mode == "features":
        return ["reference", "linear_probe", "tl_studio"] if pretrained else ["reference", "tl_studio"]
    return ["reference", "reference_lr1e-4", "tl_studio"]


def run_side(side: str, mode: str, root: Path, backbone: str, epochs: int, device: torch.device, pretrained: bool,
             log=print) -> dict:
    """One row of the benchmark, timed from its first line of work (what `run_bench` and a cold process run)."""
    if side in ("reference", "reference_lr1e-4"):
        lr = REFERENCE_FINETUNE_LR if side == "reference_lr1e-4" else 1e-3
        return reference_loop(root, backbone, epochs, device, mode == "full", pretrained, log, lr)
    if side == "linear_probe":
        return probe_side(root, backbone, device)
    config = TrainConfig(backbone=backbone, strategy=mode, epochs=epochs, device=str(device), pretrained=pretrained)
    return studio_run(root, config, log)


def add_speedups(rows: dict[str, dict], key: str = "seconds") -> None:
    """TL Studio's speed-up over each tutorial loop, by `key` (seconds in one process, work seconds when cold)."""
    ours = rows["tl_studio"]
    for side in ("reference", "reference_lr1e-4"):
        if side in rows:
            ours["speedup" + side.removeprefix("reference")] = round(rows[side][key] / ours[key], 2)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _setup(data: str | None, backbone: str, device_name: str | None) -> tuple[Path, torch.device, bool]:
    prepare_weights()
    if data is None:
        root = default_data()
    elif data == "demo":
        from tl_core.data.demo import demo_root

        root = demo_root()
    else:
        root = Path(data)
    pretrained = backbones.is_cached(backbones.pick_weights(backbone))
    if not pretrained:
        _log(f"note: {backbones.weight_file(backbones.pick_weights(backbone))} is not cached; both sides train from scratch")
    return root, pick_device(device_name), pretrained


def run_bench(data: str | None, backbone: str, epochs: int, device_name: str | None, modes: list[str],
              progress=None) -> dict:
    root, device, pretrained = _setup(data, backbone, device_name)
    out = {"data": str(root), "backbone": backbone, "epochs": epochs, "device": describe_device(device),
           "pretrained": pretrained, "torch": torch.__version__, "modes": {}}
    for mode in modes:
        rows: dict[str, dict] = {}
        for side in sides(mode, pretrained):
            _log(f"[{mode}] {side} ...")
            with PeakMemory(device) as mem:
                rows[side] = run_side(side, mode, root, backbone, epochs, device, pretrained, _log)
            rows[side]["peak_memory_mb"] = mem.mb
        add_speedups(rows)
        out["modes"][mode] = rows
    _print(out)
    return out


def _print(out: dict) -> None:
    print(f"{out['backbone']} on {out['data']}, {out['epochs']} epochs, {out['device']}", file=sys.stderr)
    cols = ("seconds", "images_per_s", "peak_memory_mb", "best_val_accuracy", "final_val_accuracy")
    _table(out["modes"], cols)


def _shown(column: str, value):
    """A bench table cell: accuracies as percentages and durations in seconds, as everywhere else."""
    if value == "" or not isinstance(value, (int, float)):
        return value
    if "accuracy" in column:
        return percent(value)
    return seconds(value) if column == "seconds" else value


def _table(modes: dict[str, dict[str, dict]], cols: tuple[str, ...]) -> None:
    print(f"{'mode':<10}{'side':<18}" + "".join(f"{c:>20}" for c in cols) + f"{'speed-up':>10}{'vs lr 1e-4':>12}",
          file=sys.stderr)
    for mode, rows in modes.items():
        for side, r in rows.items():
            print(f"{mode:<10}{side:<18}" + "".join(f"{_shown(c, r.get(c, '')):>20}" for c in cols)
                  + f"{r.get('speedup', ''):>10}{r.get('speedup_lr1e-4', ''):>12}", file=sys.stderr)


# ---------------------------------------------------------------- cold: every side in a fresh process


def cold_process(side: str, mode: str, root: Path, backbone: str, epochs: int, device_name: str | None) -> dict:
    """One side as a whole `python -m tl_core.measure.bench` process with an empty TL Studio home (no embedding or scan
    cache). The child stamps the wall clock once its imports are done, so import and work are reported apart:
    both sides pay Python + torch start-up, the work after it is what the speed-up is about."""
    cmd = [sys.executable, "-m", "tl_core.measure.bench", side, mode, str(root), "--backbone", backbone, "--epochs", str(epochs)]
    with tempfile.TemporaryDirectory() as home:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.time()
        proc = subprocess.run(cmd + (["--device", device_name] if device_name else []), capture_output=True, text=True,
                              env={**os.environ, "TL_STUDIO_HOME": home}, cwd=Path(__file__).resolve().parents[2])
        process = time.time() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{side} ({mode}) failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["import_seconds"] = round(row.pop("imported_at") - start, 2)
    row["process_seconds"] = round(process, 2)
    row["process_cpu_seconds"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    return row


def run_cold(data: str | None, backbone: str, epochs: int, device_name: str | None, modes: list[str],
             repeats: int = 3) -> dict:
    """Every side of every mode as whole processes from cold caches, `repeats` times interleaved (so the load of a
    shared machine falls on all sides alike); medians reported, every run kept under `runs`."""
    import statistics

    root, device, pretrained = _setup(data, backbone, device_name)
    runs: dict[str, dict[str, list[dict]]] = {m: {s: [] for s in sides(m, pretrained)} for m in modes}
    for r in range(repeats):
        for mode in modes:
            for side in runs[mode]:
                _log(f"[cold {r + 1}/{repeats}] {mode} {side} ...")
                runs[mode][side].append(cold_process(side, mode, root, backbone, epochs, device_name))
                _log(f"  {runs[mode][side][-1]}")
    keys = ("import_seconds", "work_seconds", "work_cpu_seconds", "process_seconds", "process_cpu_seconds",
            "best_val_accuracy", "final_val_accuracy")
    out = {"data": str(root), "backbone": backbone, "epochs": epochs, "device": describe_device(device),
           "cpus": os.cpu_count(), "pretrained": pretrained, "torch": torch.__version__, "repeats": repeats, "modes": {}}
    for mode, by_side in runs.items():
        rows = {side: {k: round(statistics.median(x[k] for x in got), 4) for k in keys} | {"runs": got}
                for side, got in by_side.items()}
        add_speedups(rows, "work_seconds")
        out["modes"][mode] = rows
    print(f"{backbone} on {root}, {epochs} epochs, {out['device']}, whole processes from cold caches, median of "
          f"{repeats}", file=sys.stderr)
    _table(out["modes"], ("import_seconds", "work_seconds", "work_cpu_seconds", "best_val_accuracy"))
    return out


def _side_main(argv: list[str]) -> None:
    """`python -m tl_core.measure.bench SIDE MODE DATA`: one side, its JSON on stdout (what `cold_process` starts)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tl_core.measure.bench")
    parser.add_argument("side", choices=["reference", "reference_lr1e-4", "linear_probe", "tl_studio"])
    parser.add_argument("mode", choices=["features", "full"])
    parser.add_argument("data")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda", "mps"])
    args = parser.parse_args(argv)
    if args.side in ("tl_studio", "linear_probe"):  # each side imports what it uses before its clock starts
        import tl_core.features.probe  # noqa: F401
        import tl_core.train.runs  # noqa: F401
        import tl_core.train.trainer  # noqa: F401
    root, device, pretrained = _setup(args.data, args.backbone, args.device)
    imported_at = time.time()
    cpu = time.process_time()
    row = run_side(args.side, args.mode, root, args.backbone, args.epochs, device, pretrained, _log)
    row.update(imported_at=imported_at, work_seconds=round(time.time() - imported_at, 2),
               work_cpu_seconds=round(time.process_time() - cpu, 2))
    print(json.dumps(row))


def make_synthetic(root: Path, n: int, classes: int = 5, seed: int = 0) -> Path:
    """n demo-style JPEGs in train/ and val/ class folders (80/20) for the scale benchmark."""
    import numpy as np

    from tl_core.data.demo import CLASSES, draw

    rng = np.random.default_rng(seed)
    for i in range(n):
        kind = CLASSES[i % classes]
        split = "val" if (i // classes) % 5 == 0 else "train"  # 20% of each class
        folder = root / split / kind
        folder.mkdir(parents=True, exist_ok=True)
        draw(kind, rng, 128).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def scale_point(n: int, backbone: str, device_name: str | None) -> dict:
    """One scale measurement in a child process, so its peak memory is its own."""
    prepare_weights()
    pretrained = backbones.is_cached(backbones.pick_weights(backbone))
    config = f"TrainConfig(backbone={backbone!r},epochs=5,device={device_name!r},pretrained={pretrained})"
    code = (
        "import json,resource,sys,time,tempfile;from tl_core.config import TrainConfig;from tl_core.train.trainer import train;"
        f"t=time.perf_counter();r=train(sys.argv[1],{config},tempfile.mkdtemp());"
        "print(json.dumps({'seconds':time.perf_counter()-t,'best_val_accuracy':r.best_val_accuracy,"
        "'peak_rss_mb':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))"
    )
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        data = make_synthetic(Path(tmp) / "data", n)
        made = time.perf_counter() - t
        env = {**os.environ, "TL_STUDIO_HOME": str(Path(tmp) / "home")}
        proc = subprocess.run([sys.executable, "-c", code, str(data)], capture_output=True, text=True, env=env)
        if proc.returncode:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1])
        row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(images=n, pretrained=pretrained, seconds=round(row["seconds"], 1), peak_rss_mb=round(row["peak_rss_mb"]),
               seconds_per_1k=round(row["seconds"] / n * 1000, 2), synth_seconds=round(made, 1))
    return row


if __name__ == "__main__":
    _side_main(sys.argv[1:])
