"""Use a trained run: predict images (one by one or a whole folder / zip), evaluate a split with calibration."""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import nn

from tl_core import paths
from tl_core.data import balance as metrics
from tl_core.data import targets as answers
from tl_core.data.images import IMAGE_EXTENSIONS, BadImage, content_hash, is_hidden, open_rgb, to_rgb
from tl_core.data.pipeline import Batcher, decode_square, square
from tl_core.data.sources import DatasetSpec, safe_extract
from tl_core.data.targets import Targets
from tl_core.devices import fast_dtype, inference_batch, pick_device
from tl_core.formats import percent
from tl_core.models import backbones
from tl_core.models.backbones import Preprocessing
from tl_core.train.runs import Run, load_run, record_checked_accuracy
from tl_core.use import calibration, familiarity, label_sets
from tl_core.use.calibration import Calibration
from tl_core.use.familiarity import Familiarity
from tl_core.use.label_sets import LabelThresholds

ImageInput = str | Path | Image.Image | BinaryIO
UNSURE = "unsure / none of these"
NONE_OF_THESE = "looks like none of the classes"
NO_LABEL = "none of the labels"  # a multi-label answer with no label over its threshold


@dataclass
class Prediction:
    file: str
    top: list[tuple[str, float]]
    error: str | None = None
    distance: float | None = None  # from the training pictures (tl_core.use.familiarity); None: not measured
    familiar_within: float | None = None  # the run's threshold on that distance
    labels: list[tuple[str, float]] | None = None  # a multi-label run's answer: each label over its own threshold

    def to_dict(self) -> dict:
        return {"file": self.file, "top": [list(t) for t in self.top], **({"error": self.error} if self.error else {}),
                **({"labels": [{"label": c, "probability": v} for c, v in self.labels]} if self.labels is not None else {}),
                **({"distance": self.distance, "familiar_within": self.familiar_within} if self.distance is not None else {})}

    @property
    def unfamiliar(self) -> bool:
        """Further from the training pictures than the run's validation pictures are: of none of the classes."""
        return self.distance is not None and self.familiar_within is not None and self.distance > self.familiar_within

    def answer(self, threshold: float) -> str:
        """The top class, or UNSURE when the picture is unlike the training pictures or even the top class is below
        `threshold` (calibrated confidence)."""
        if not self.top:
            return ""
        if self.reason(threshold):
            return UNSURE
        if self.labels is not None:
            return "; ".join(c for c, _ in self.labels) or NO_LABEL
        return self.top[0][0]

    def reason(self, threshold: float) -> str:
        """Why the answer is UNSURE, in words; "" when it is a class."""
        if not self.top:
            return ""
        best, prob = self.top[0]
        if self.unfamiliar:
            return (f"{NONE_OF_THESE}: unlike every training picture (distance {self.distance:.2f}, validation pictures "
                    f"lie within {self.familiar_within:.2f}); the softmax alone would say {best} {percent(prob)}")
        if prob < threshold and self.labels is None:  # a label set has each label's own threshold instead
            return f"not sure which class: best guess {best} at {percent(prob)}, below {percent(threshold)}"
        return ""


def build_model(backbone: str, num_classes: int, head: str, state: dict[str, torch.Tensor],
                source: str = "the weights") -> nn.Module:
    """The trained network from its state dict alone: no weight download, no network.

    Weights that do not fit (another class count, another backbone) are one line naming `source`.
    """
    model = backbones.bare(backbone)
    backbones._drop_aux(model)
    backbones.replace_head(model, num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = next((ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()), str(e)).rstrip(".")
        raise ValueError(f"{source} does not fit {backbone} with {num_classes} classes ({detail[:200]}).") from None
    return model.eval()


class Predictor:
    """A trained model ready to classify: probabilities are softmax(logits / temperature), i.e. calibrated, and
    with `familiarity` each picture's distance from the training pictures (read from the head's input)."""

    def __init__(self, model: nn.Module, classes: list[str], prep: Preprocessing, device: torch.device,
                 backbone: str | None = None, calibration: Calibration | None = None, head: str | None = None,
                 familiarity: Familiarity | None = None, targets: Targets = Targets(),
                 label_thresholds: LabelThresholds | None = None):
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.classes, self.prep, self.device, self.backbone, self.head = classes, prep, device, backbone, head
        self.batcher = Batcher(prep, device, "none")
        self.dtype = fast_dtype(device)
        self.calibration = calibration
        self.familiarity = familiarity
        self.targets, self.label_thresholds = targets, label_thresholds

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration else 1.0

    @property
    def threshold(self) -> float:
        """Default "unsure" confidence: from the validation split, else chance level (a label set has none: each
        label has its own threshold instead)."""
        if self.targets.multi_label:
            return 0.0
        return self.calibration.threshold if self.calibration else 1.0 / len(self.classes)

    @property
    def thresholds(self) -> list[float]:
        """Each label's threshold of a multi-label run (0.5 each until chosen on validation)."""
        return self.label_thresholds.thresholds if self.label_thresholds else [label_sets.DEFAULT] * len(self.classes)

    @classmethod
    def from_run(cls, run: Run | str | Path, device: str | None = None, which: str = "best") -> Predictor:
        run = run if isinstance(run, Run) else load_run(run)
        predictor = cls(*model_parts(run, which), pick_device(device), run.info["config"]["backbone"], head=run.info["head"],
                        targets=run.targets)
        if which == "best":
            predictor.calibration, predictor.familiarity, predictor.label_thresholds = held_out_records(run, predictor)
        return predictor

    @contextmanager
    def _head_input(self) -> Iterator[list[torch.Tensor]]:
        """Collects what the head receives on each forward pass (the penultimate features), while inside."""
        caught: list[torch.Tensor] = []
        if self.head is None:
            yield caught
            return
        hook = self.model.get_submodule(self.head).register_forward_hook(lambda m, i, o: caught.append(pooled(i[0])))
        try:
            yield caught
        finally:
            hook.remove()

    def outputs(self, u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N, C], penultimate features [N, D]) in one pass; features are [N, 0] when the head is unknown."""
        out, batch_size = [], inference_batch(self.device)
        with (self._head_input() as caught, torch.inference_mode(),
              torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)):
            for i in range(0, len(u8), batch_size):
                out.append(self.model(self.batcher.eval(u8[i : i + batch_size])).float().cpu())
        logits = torch.cat(out) if out else torch.empty(0, len(self.classes))
        return logits, torch.cat(caught) if caught else torch.empty(len(logits), 0)

    def probabilities(self, u8: torch.Tensor) -> torch.Tensor:
        return self.targets.probabilities(self.outputs(u8)[0] / self.temperature)

    def predict(self, images: Sequence[ImageInput], top_k: int = 3) -> list[Prediction]:
        """Top-k (class, probability) per image; an unreadable image gets its reason, not an exception."""
        arrays, names, errors = [], [], {}
        for i, item in enumerate(images):
            name = str(item) if isinstance(item, (str, Path)) else getattr(item, "name", f"image {i + 1}")
            names.append(name)
            try:
                img = to_rgb(item) if isinstance(item, Image.Image) else open_rgb(item, min_side=self.prep.resize)
                arrays.append(square(img, self.prep))
            except BadImage as e:
                errors[i] = str(e)
        u8 = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) if arrays else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        logits, features = self.outputs(u8)
        fam = self.familiarity if self.familiarity is not None and features.shape[1] else None
        distances = iter(fam.distance(features).tolist() if fam else [None] * len(logits))
        probs = iter(self.targets.probabilities(logits / self.temperature))
        k = min(top_k, len(self.classes))
        cut = self.thresholds if self.targets.multi_label else None
        results = []
        for i, name in enumerate(names):
            if i in errors:
                results.append(Prediction(name, [], errors[i]))
                continue
            p, d = next(probs), next(distances)
            values, idx = p.topk(k)
            labels = None if cut is None else [(c, round(float(v), 6)) for c, v, t in zip(self.classes, p, cut) if v >= t]
            results.append(Prediction(name, [(self.classes[j], round(float(v), 6)) for v, j in zip(values, idx)], None,
                                      None if d is None else round(d, 6), fam.threshold if fam else None, labels))
        return results


    def predict_many(self, files: Sequence[str], top_k: int = 3, chunk: int = 32,
                     progress: Callable[[int, int], None] | None = None) -> list[Prediction]:
        """`predict` over a long list in chunks, reporting progress (a folder or zip of thousands)."""
        out: list[Prediction] = []
        for start in range(0, len(files), chunk):
            out += self.predict(files[start : start + chunk], top_k)
            if progress:
                progress(len(out), len(files))
        return out


def prediction_rows(predictions: Sequence[Prediction], threshold: float) -> list[dict]:
    """One flat row per image (the batch table and its CSV): answer, then every top-k class and probability."""
    rows = []
    for p in predictions:
        row = {"file": p.file, "answer": p.answer(threshold), "why_unsure": p.reason(threshold),
               "confidence": p.top[0][1] if p.top else None, "distance": p.distance}
        for i, (c, v) in enumerate(p.top, 1):
            row[f"top{i}"], row[f"top{i}_probability"] = c, v
        rows.append({**row, "error": p.error or ""})
    return rows


def write_csv(predictions: Sequence[Prediction], path: str | Path, threshold: float) -> Path:
    rows = prediction_rows(predictions, threshold)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


KEEP_UNPACKED = 8  # zips of images kept unpacked for reruns; older ones are removed
UNPACKED = ".extracted"  # in an unpacked zip's folder: marks it complete and lists the members not unpacked
HIDDEN = "hidden or system file"
LINK_OUT = "a link leading out of the folder; not read"


def _hidden_members(archive: str | Path) -> list[list[str]]:
    """[name, reason] of a zip's hidden entries (which `safe_extract` does not unpack), each topmost one once."""
    import zipfile

    out: dict[str, str] = {}
    with zipfile.ZipFile(archive) as zf:
        for name in zf.namelist():
            parts = PurePosixPath(name).parts
            first = next((i for i, part in enumerate(parts) if is_hidden(part)), None)
            if first is not None:
                out.setdefault("/".join(parts[: first + 1]), HIDDEN)
    return [[name, reason] for name, reason in out.items()]


def unpack_zip(archive: str | Path) -> Path:
    """A user's zip of images, extracted safely once (same checks as a dataset zip) under TL Studio's home; only the
    most recently used few stay, and a refused zip leaves nothing behind. The members left packed (hidden and system
    files) are listed in the folder's UNPACKED mark, so a batch prediction can say what it skipped."""
    folder = paths.home() / "predict-uploads"
    target = folder / content_hash(archive)[:16]
    if (target / UNPACKED).exists():
        os.utime(target)
        return target
    try:
        safe_extract(archive, target)
        (target / UNPACKED).write_text(json.dumps(_hidden_members(archive)))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    unpacked = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in unpacked[KEEP_UNPACKED:]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def unpack_upload(data: bytes | memoryview) -> Path:
    """An uploaded zip of images, unpacked like `unpack_zip`. The bytes go to a file with a generated name (the
    uploaded name is never a path) that is deleted once unpacked: a rerun with the same upload reuses the unpacked
    folder and leaves nothing new behind."""
    folder = paths.home() / "predict-uploads"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(suffix=".zip", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return unpack_zip(name)
    finally:
        os.unlink(name)


@dataclass(frozen=True)
class Skipped:
    """A file a batch prediction did not classify, and why. `file` is its name inside the folder or zip the user
    gave (`photos.zip/a/.DS_Store`), never a path on the server."""

    file: str
    reason: str


@dataclass
class Inputs:
    """What a batch prediction reads: each image as (path to read, name to show), and the files it leaves out."""

    images: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.images]

    def __iadd__(self, other: Inputs) -> Inputs:
        self.images += other.images
        self.skipped += other.skipped
        return self


def _packed(folder: Path) -> list[tuple[str, str]]:
    """(member, reason) of what an unpacked zip's folder was unpacked without; nothing for a plain folder."""
    try:
        return [(str(name), str(reason)) for name, reason in json.loads((folder / UNPACKED).read_text())]
    except (OSError, ValueError, TypeError):  # a plain folder, or a mark without the list
        return []


def _why_not(f: Path, inside: Path) -> str | None:
    """Why a file under a batch folder is not read (None: it is an image to classify)."""
    if is_hidden(f.name):
        return HIDDEN
    if not f.resolve().is_relative_to(inside):
        return LINK_OUT
    if f.is_dir():
        return None
    if f.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file ({f.suffix or 'no extension'})"
    return None


def folder_inputs(folder: str | Path, shown: str | Path) -> Inputs:
    """A folder's image files (recursively) named `shown/relative path`, and every other entry with why it is left
    out: hidden and system files (a hidden folder once, not its contents), links leading out of the folder, files
    that are not images, and the hidden members of the zip it was unpacked from."""
    folder, shown = Path(folder), Path(shown)
    inside = folder.resolve()
    out = Inputs(skipped=[Skipped(str(shown / name), reason) for name, reason in _packed(folder)])
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if rel == Path(UNPACKED) or any(is_hidden(part) for part in rel.parts[:-1]):
            continue  # the unpacked mark; inside a hidden folder, which is listed once
        if reason := _why_not(f, inside):
            out.skipped.append(Skipped(str(shown / rel), reason))
        elif not f.is_dir():
            out.images.append((str(f), str(shown / rel)))
    return out


def gather_inputs(items: Sequence[str]) -> Inputs:
    """Files as given; folders and .zip files become their image files, named as the user knows them: a zip's as
    `x.zip/member` (never the temporary folder it was unpacked into), a folder's as the path given plus the file
    inside it. What a folder or zip holds besides images is listed as skipped, with why."""
    out = Inputs()
    for item in items:
        p = Path(item)
        if p.suffix.lower() == ".zip" and p.is_file():
            out += folder_inputs(unpack_zip(p), p.name)
        elif p.is_dir():
            out += folder_inputs(p, item)
        elif p.exists():
            out.images.append((str(p), item))
        else:
            raise FileNotFoundError(f"{item} does not exist.")
    return out


def expand_inputs(items: Sequence[str]) -> list[str]:
    """The image files to read of `gather_inputs(items)`."""
    return gather_inputs(items).paths


@dataclass
class Batch:
    """A batch prediction: one Prediction per image read or tried (named as the user knows it), and every file it
    did not classify with why: left out of the listing (not an image, hidden, a link out) or unreadable."""

    predictions: list[Prediction]
    left_out: list[Skipped] = field(default_factory=list)

    @property
    def classified(self) -> list[Prediction]:
        return [p for p in self.predictions if not p.error]

    @property
    def skipped(self) -> list[Skipped]:
        return self.left_out + [Skipped(p.file, p.error) for p in self.predictions if p.error]

    def to_dict(self, threshold: float) -> dict:
        """`predict --json`: the classified images with answer and reason, and the skipped files with theirs."""
        return {"predictions": [{**p.to_dict(), "answer": p.answer(threshold), "reason": p.reason(threshold)}
                                for p in self.classified],
                "skipped": [asdict(s) for s in self.skipped]}


def predict_batch(predictor: Predictor, inputs: Inputs, top_k: int = 3,
                  progress: Callable[[int, int], None] | None = None) -> Batch:
    """Every image of `inputs`, each prediction under the name the user knows the file by."""
    predictions = predictor.predict_many(inputs.paths, top_k, progress=progress)
    return Batch([replace(p, file=shown) for p, (_, shown) in zip(predictions, inputs.images)], list(inputs.skipped))


@dataclass
class Evaluation:
    split: str
    classes: list[str]
    accuracy: float  # a multi-label run's: exact-set accuracy (every label of the picture right)
    per_class: list[dict]
    confusion_matrix: list[list[int]]  # one-class runs only ([] for label sets)
    mistakes: list[dict]
    predictions: list[dict] = field(default_factory=list)  # every image: file, true, predicted, confidence
    skipped: list[dict] = field(default_factory=list)
    ece: float | None = None  # expected calibration error of the raw softmax on this split
    ece_calibrated: float | None = None  # ... of the confidences predictions use (held out; = ece when not applied)
    temperature: float = 1.0
    threshold: float | None = None  # default "unsure" confidence (from the validation split)
    calibration: str = ""  # what was done to the confidences, in a sentence
    checkpoint: str = "best"
    epoch: int | None = None  # the epoch that checkpoint is from
    balanced_accuracy: float | None = None  # mean of the per-class recall: accuracy as if every class were equally common
    multi_label: bool = False
    micro_f1: float | None = None  # label sets: F1 over every (picture, label) decision
    macro_f1: float | None = None  # label sets: mean of the labels' F1
    mean_average_precision: float | None = None  # label sets: mAP, threshold-free

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def accuracy_name(self) -> str:
        return answers.of(self.multi_label).accuracy_name

    @property
    def accuracy_label(self) -> str:
        """Which figure this is: split and checkpoint, as the run picker and `runs` label theirs."""
        return f"{percent(self.accuracy)} on {self.split}, {self.checkpoint} checkpoint" + (
            f" (epoch {self.epoch})" if self.epoch else "")

    def cell(self, true: str, predicted: str) -> list[dict]:
        """The images behind one confusion-matrix cell, most confident first."""
        rows = [p for p in self.predictions if p["true"] == true and p["predicted"] == predicted]
        return sorted(rows, key=lambda p: -p["confidence"])


def checkpoint_stamp(run: Run) -> float:
    return (run.dir / "best.safetensors").stat().st_mtime


Item = tuple[str, "int | tuple[int, ...]"]  # (path, class or label set), as `Run.split` gives them


@dataclass
class SplitOutputs:
    """One pass of the predictor over labelled pictures (one of the run's splits, or another dataset)."""

    logits: torch.Tensor
    features: torch.Tensor  # penultimate features (the head's input); [N, 0] when the head is unknown
    labels: torch.Tensor  # class indices [N], or multi-hot label sets [N, C]
    files: list[str]
    skipped: list[dict]  # files that could not be read, with why
    targets: Targets = field(default_factory=Targets)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy, or exact-set accuracy at 0.5 (`label_sets` scores sets at each label's threshold)."""
        return float(self.targets.correct(self.logits, self.labels).double().mean()) if len(self.labels) else 0.0


def outputs_of(items: list[Item], predictor: Predictor, progress: Callable[[int, int], None] | None = None) -> SplitOutputs:
    """Logits and features of labelled pictures; unreadable ones are listed with why."""
    classes = len(predictor.classes)
    logits, features, labels, files, skipped = [], [], [], [], []
    for start in range(0, len(items), 64):
        arrays = []
        for path, label in items[start : start + 64]:
            try:
                arrays.append(decode_square(path, predictor.prep))
                files.append(path)
                labels.append(label)
            except (BadImage, OSError) as e:
                skipped.append({"file": path, "reason": str(e)})
        if arrays:
            lg, ft = predictor.outputs(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
            logits.append(lg)
            features.append(ft)
        if progress:
            progress(min(start + 64, len(items)), len(items))
    return SplitOutputs(torch.cat(logits) if logits else torch.empty(0, classes),
                        torch.cat(features) if features else torch.empty(0, 0),
                        predictor.targets.tensor(labels, classes), files, skipped, predictor.targets)


def split_outputs(run: Run, predictor: Predictor, split: str, progress: Callable[[int, int], None] | None = None,
                  at_most: int | None = None) -> SplitOutputs:
    """Logits and features of one of the run's splits (`at_most` images, evenly spaced, when given)."""
    items = run.split(split)
    if not items:
        raise ValueError(f"Run {run.id} has no {split!r} split.")
    if at_most:
        items = items[:: max(1, -(-len(items) // at_most))]
    return outputs_of(items, predictor, progress)


def calibration_of(run: Run, predictor: Predictor, val: SplitOutputs | None = None) -> Calibration | None:
    """The run's calibration for its current best checkpoint, fitted on the validation split when missing (from
    `val` when that pass is already done); the checkpoint's validation accuracy is recorded with it. A multi-label
    run has none: its labels are cut at thresholds chosen on validation instead (`label_thresholds_of`)."""
    if run.multi_label:
        return None
    stamp = checkpoint_stamp(run)
    cal = calibration.load(run.dir, stamp)
    if cal is None and run.split("val"):
        val = val or split_outputs(run, predictor, "val")
        cal = calibration.calibrate(val.logits, val.labels, stamp)
        calibration.save(run.dir, cal)
        record_checked_accuracy(run, val.accuracy, stamp)
    return cal


def label_thresholds_of(run: Run, predictor: Predictor, val: SplitOutputs | None = None) -> LabelThresholds | None:
    """A multi-label run's per-label thresholds for its best checkpoint, chosen on the validation split when missing;
    the exact-set accuracy at them is recorded as the run's checked accuracy. None for a one-class run."""
    if not run.multi_label:
        return None
    stamp = checkpoint_stamp(run)
    found = label_sets.load(run.dir, stamp)
    if found is None and run.split("val"):
        val = val or split_outputs(run, predictor, "val")
        probs = run.targets.probabilities(val.logits)
        found = label_sets.choose(probs, val.labels, stamp)
        found.save(run.dir)
        record_checked_accuracy(run, label_sets.scores(probs, val.labels, found, run.classes).exact_set_accuracy, stamp)
    return found


def familiarity_of(run: Run, predictor: Predictor, val: SplitOutputs | None = None) -> Familiarity | None:
    """How far pictures may be from the training pictures, for the current best checkpoint's own features; measured
    once (training and validation images) and kept beside the run. None without a validation split to set it on."""
    stamp = checkpoint_stamp(run)
    fam = familiarity.load(run.dir / familiarity.FILE, stamp)
    if fam is None and predictor.head and run.split("val") and run.split("train"):
        val = val or split_outputs(run, predictor, "val")
        train = split_outputs(run, predictor, "train", at_most=familiarity.MAX_REFERENCE)
        fam = familiarity.fit(train.features, val.features, stamp, None if run.multi_label else val.labels)
        fam.save(run.dir)
    return fam


def held_out_records(run: Run, predictor: Predictor) -> tuple[Calibration | None, Familiarity | None, LabelThresholds | None]:
    """Calibration (or a label set's thresholds) and familiarity of the best checkpoint, sharing one validation
    pass when any is missing."""
    stamp = checkpoint_stamp(run)
    missing = (familiarity.load(run.dir / familiarity.FILE, stamp) is None
               or (label_sets.load(run.dir, stamp) if run.multi_label else calibration.load(run.dir, stamp)) is None)
    val = split_outputs(run, predictor, "val") if missing and run.split("val") else None
    return calibration_of(run, predictor, val), familiarity_of(run, predictor, val), label_thresholds_of(run, predictor, val)


def other_items(run: Run, data: DatasetSpec) -> tuple[list[Item], str, list[dict]]:
    """Every usable picture of another dataset, labelled in the run's class order: (items, a name for them, pictures
    left out with why). A picture with a label the run does not know is left out; labels are matched by name."""
    from tl_core.data.scan import scan

    report = scan(data)
    index = {c: i for i, c in enumerate(run.classes)}
    items, skipped = [], [{"file": p.path, "reason": p.reason} for p in report.skipped]
    for im in report.images:
        names = [report.classes[y] for y in im.label_set]
        if unknown := [n for n in names if n not in index]:
            skipped.append({"file": im.path, "reason": f"label {', '.join(unknown)} is not one of the run's"})
            continue
        ids = tuple(sorted(index[n] for n in names))
        items.append((im.path, ids if run.multi_label else ids[0]))
    if not items:
        raise ValueError(f"{report.name} has no picture of the run's classes ({', '.join(run.classes)}).")
    return items, f"{report.name} (all {len(items)} pictures)", skipped


def evaluate(run: Run | str | Path, split: str = "val", device: str | None = None,
             progress: Callable[[int, int], None] | None = None, data: DatasetSpec | None = None) -> Evaluation:
    """Accuracy, balanced accuracy, per-class precision/recall/F1, confusion matrix, mistakes and calibration of the
    best checkpoint on one of the run's own splits, or on every picture of another dataset (`data`, labels matched by
    name). A multi-label run gets per-label scores, micro and macro F1, mAP and exact-set accuracy instead of a
    confusion matrix. The validation accuracy is recorded, so the run picker and `runs` show it."""
    run = run if isinstance(run, Run) else load_run(run)
    predictor = Predictor(*model_parts(run), pick_device(device), run.info["config"]["backbone"], head=run.info["head"],
                          targets=run.targets)
    skipped: list[dict] = []
    if data is None:
        out = split_outputs(run, predictor, split, progress)
    else:
        items, split, skipped = other_items(run, data)
        out = outputs_of(items, predictor, progress)
    own_val = data is None and split == "val"
    out.skipped = skipped + out.skipped
    if run.multi_label:
        return _evaluate_sets(run, predictor, out, split, own_val)
    predictor.calibration = cal = calibration_of(run, predictor, out if own_val else None)
    if own_val:
        record_checked_accuracy(run, out.accuracy, checkpoint_stamp(run))
    logits, labels, probs = out.logits, out.labels, (out.logits / predictor.temperature).softmax(1)
    classes = run.classes
    preds = []
    for path, label, p in zip(out.files, labels.tolist(), probs):
        j = int(p.argmax())
        preds.append({"file": path, "true": classes[label], "predicted": classes[j],
                      "confidence": round(float(p[j]), 6), "true_probability": round(float(p[label]), 6)})
    n = len(classes)
    cm = np.zeros((n, n), dtype=int)
    for p in preds:
        cm[classes.index(p["true"]), classes.index(p["predicted"])] += 1
    per_class = []
    for i, c in enumerate(classes):
        tp, fp, fn = cm[i, i], cm[:, i].sum() - cm[i, i], cm[i, :].sum() - cm[i, i]
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append({"class": c, "precision": round(float(precision), 4), "recall": round(float(recall), 4),
                          "f1": round(float(f1), 4), "support": int(cm[i].sum())})
    mistakes = sorted((p for p in preds if p["true"] != p["predicted"]), key=lambda p: -p["confidence"])
    accuracy = float(np.trace(cm) / cm.sum()) if cm.sum() else 0.0
    if own_val and cal is not None:  # the held-out figures the calibration decision was made on
        ece_raw, ece_used = cal.ece, cal.ece_calibrated
    else:
        ece_raw, ece_used = round(calibration.ece(logits.softmax(1), labels), 6), round(calibration.ece(probs, labels), 6)
    balanced = metrics.balanced_accuracy(metrics.recall(np.diag(cm).tolist(), cm.sum(1).tolist()))
    return Evaluation(split, classes, accuracy, per_class, cm.tolist(), mistakes, preds, out.skipped, ece_raw, ece_used,
                      predictor.temperature, predictor.threshold, cal.sentence() if cal else "", "best",
                      run.summary.get("best_epoch"), round(balanced, 6))


def _evaluate_sets(run: Run, predictor: Predictor, out: SplitOutputs, split: str, own_val: bool) -> Evaluation:
    """A multi-label run's evaluation: each label cut at its validation threshold, scored per label and as sets."""
    cuts = label_thresholds_of(run, predictor, out if own_val else None)
    cuts = cuts or LabelThresholds([label_sets.DEFAULT] * len(run.classes), checkpoint_stamp(run))
    probs = run.targets.probabilities(out.logits)
    found = label_sets.scores(probs, out.labels, cuts, run.classes)
    said, truth = cuts.cut(probs), out.labels > 0.5
    preds = []
    for path, p, s_row, t_row in zip(out.files, probs, said, truth):
        named = lambda row: "; ".join(c for c, on in zip(run.classes, row.tolist()) if on) or NO_LABEL  # noqa: E731
        margin = (p - torch.tensor(cuts.thresholds)).abs().min()  # how near the closest call was to its cut
        preds.append({"file": path, "true": named(t_row), "predicted": named(s_row),
                      "confidence": round(float(1 - margin), 6),
                      "probabilities": {c: round(float(v), 6) for c, v in zip(run.classes, p)}})
    mistakes = [p for p, s_row, t_row in zip(preds, said, truth) if not bool((s_row == t_row).all())]
    per_label = [{"class": row.pop("label"), **row} for row in (dict(r) for r in found.per_label)]
    return Evaluation(split, run.classes, found.exact_set_accuracy, per_label, [], mistakes, preds, out.skipped,
                      threshold=None, calibration=cuts.sentence(), epoch=run.summary.get("best_epoch"), multi_label=True,
                      micro_f1=found.micro_f1, macro_f1=found.macro_f1,
                      mean_average_precision=found.mean_average_precision)


def pooled(x: torch.Tensor) -> torch.Tensor:
    """The head's input as one vector per image (a convolutional head's input averaged over its positions)."""
    x = x.detach().float()
    return (x.mean(tuple(range(2, x.ndim))) if x.ndim > 2 else x).cpu()


def model_parts(run: Run, which: str = "best") -> tuple[nn.Module, list[str], Preprocessing]:
    """(model, classes, preprocessing) of a run's checkpoint, built offline from its state dict."""
    info = run.info
    model = build_model(info["config"]["backbone"], len(info["classes"]), info["head"], run.model_state(which),
                        str(run.dir / f"{which}.safetensors"))
    return model, info["classes"], Preprocessing.from_dict(info["preprocessing"])
