"""Use a trained run: predict images (one by one or a whole folder / zip), evaluate a split with calibration."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import nn

from tl_core import paths
from tl_core.data.images import IMAGE_EXTENSIONS, BadImage, content_hash, is_hidden, open_rgb, to_rgb
from tl_core.data.pipeline import Batcher, decode_square, square
from tl_core.data.sources import safe_extract
from tl_core.devices import fast_dtype, inference_batch, pick_device
from tl_core.models import backbones
from tl_core.models.backbones import Preprocessing
from tl_core.train.runs import Run, load_run
from tl_core.use import calibration
from tl_core.use.calibration import Calibration

ImageInput = str | Path | Image.Image | BinaryIO
UNSURE = "unsure / none of these"


@dataclass
class Prediction:
    file: str
    top: list[tuple[str, float]]
    error: str | None = None

    def to_dict(self) -> dict:
        return {"file": self.file, "top": [list(t) for t in self.top], **({"error": self.error} if self.error else {})}

    def answer(self, threshold: float) -> str:
        """The top class, or UNSURE when even it is below `threshold` (calibrated confidence)."""
        if not self.top:
            return ""
        return self.top[0][0] if self.top[0][1] >= threshold else UNSURE


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
    """A trained model ready to classify: probabilities are softmax(logits / temperature), i.e. calibrated."""

    def __init__(self, model: nn.Module, classes: list[str], prep: Preprocessing, device: torch.device,
                 backbone: str | None = None, calibration: Calibration | None = None):
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.classes, self.prep, self.device, self.backbone = classes, prep, device, backbone
        self.batcher = Batcher(prep, device, "none")
        self.dtype = fast_dtype(device)
        self.calibration = calibration

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration else 1.0

    @property
    def threshold(self) -> float:
        """Default "unsure" confidence: from the validation split, else chance level."""
        return self.calibration.threshold if self.calibration else 1.0 / len(self.classes)

    @classmethod
    def from_run(cls, run: Run | str | Path, device: str | None = None, which: str = "best") -> Predictor:
        run = run if isinstance(run, Run) else load_run(run)
        predictor = cls(*model_parts(run, which), pick_device(device), run.info["config"]["backbone"])
        if which == "best":
            predictor.calibration = calibration_of(run, predictor)
        return predictor

    def logits(self, u8: torch.Tensor) -> torch.Tensor:
        out, batch_size = [], inference_batch(self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            for i in range(0, len(u8), batch_size):
                out.append(self.model(self.batcher.eval(u8[i : i + batch_size])).float().cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

    def probabilities(self, u8: torch.Tensor) -> torch.Tensor:
        return (self.logits(u8) / self.temperature).softmax(1)

    def predict(self, images: Sequence[ImageInput], top_k: int = 3) -> list[Prediction]:
        """Top-k (class, probability) per image; an unreadable image gets its reason, not an exception."""
        arrays, names, errors = [], [], {}
        for i, item in enumerate(images):
            name = str(item) if isinstance(item, (str, Path)) else getattr(item, "name", f"image {i + 1}")
            names.append(name)
            try:
                img = to_rgb(item) if isinstance(item, Image.Image) else open_rgb(item, min_side=self.prep.resize)
                arrays.append(square(img, self.prep.resize))
            except BadImage as e:
                errors[i] = str(e)
        u8 = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) if arrays else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
        probs = iter(self.probabilities(u8))
        k = min(top_k, len(self.classes))
        results = []
        for i, name in enumerate(names):
            if i in errors:
                results.append(Prediction(name, [], errors[i]))
                continue
            p = next(probs)
            values, idx = p.topk(k)
            results.append(Prediction(name, [(self.classes[j], round(float(v), 6)) for v, j in zip(values, idx)]))
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
        row = {"file": p.file, "answer": p.answer(threshold), "confidence": p.top[0][1] if p.top else None}
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


def unpack_zip(archive: str | Path) -> Path:
    """A user's zip of images, extracted safely once (same checks as a dataset zip) under TL Studio's home."""
    target = paths.home() / "predict-uploads" / content_hash(archive)[:16]
    if not (target / ".extracted").exists():
        safe_extract(archive, target)
        (target / ".extracted").touch()
    return target


def expand_inputs(items: Sequence[str]) -> list[str]:
    """Files as given; folders and .zip files become their image files (recursively, hidden ones skipped)."""
    return [path for path, _ in named_inputs(items)]


def named_inputs(items: Sequence[str]) -> list[tuple[str, str]]:
    """(path to read, name to show) of every input image: a zip's images are named `x.zip/member`, never by the
    temporary folder they were unpacked into; a folder's as the path given plus the file inside it."""
    out = []
    for item in items:
        p = Path(item)
        shown = Path(item)
        if p.suffix.lower() == ".zip" and p.is_file():
            shown, p = Path(p.name), unpack_zip(p)
        if p.is_dir():
            out += sorted((str(f), str(shown / f.relative_to(p))) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                          and not any(is_hidden(x) for x in f.relative_to(p).parts))
        elif p.exists():
            out.append((str(p), item))
        else:
            raise FileNotFoundError(f"{item} does not exist.")
    return out


@dataclass
class Evaluation:
    split: str
    classes: list[str]
    accuracy: float
    per_class: list[dict]
    confusion_matrix: list[list[int]]
    mistakes: list[dict]
    predictions: list[dict] = field(default_factory=list)  # every image: file, true, predicted, confidence
    skipped: list[dict] = field(default_factory=list)
    ece: float | None = None  # expected calibration error of the raw softmax on this split
    ece_calibrated: float | None = None  # ... after temperature scaling (fitted on the validation split)
    temperature: float = 1.0
    threshold: float | None = None  # default "unsure" confidence (from the validation split)

    def to_dict(self) -> dict:
        return asdict(self)

    def cell(self, true: str, predicted: str) -> list[dict]:
        """The images behind one confusion-matrix cell, most confident first."""
        rows = [p for p in self.predictions if p["true"] == true and p["predicted"] == predicted]
        return sorted(rows, key=lambda p: -p["confidence"])


def checkpoint_stamp(run: Run) -> float:
    return (run.dir / "best.safetensors").stat().st_mtime


def split_logits(run: Run, predictor: Predictor, split: str, progress: Callable[[int, int], None] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[dict]]:
    """Raw logits of one of the run's own splits: (logits, labels, files, skipped files with reasons)."""
    items = run.split(split)
    if not items:
        raise ValueError(f"Run {run.id} has no {split!r} split.")
    size = predictor.prep.resize
    logits, labels, files, skipped = [], [], [], []
    for start in range(0, len(items), 64):
        arrays = []
        for path, label in items[start : start + 64]:
            try:
                arrays.append(decode_square(path, size))
                files.append(path)
                labels.append(label)
            except (BadImage, OSError) as e:
                skipped.append({"file": path, "reason": str(e)})
        if arrays:
            logits.append(predictor.logits(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)))
        if progress:
            progress(min(start + 64, len(items)), len(items))
    out = torch.cat(logits) if logits else torch.empty(0, len(run.classes))
    return out, torch.tensor(labels, dtype=torch.long), files, skipped


def calibration_of(run: Run, predictor: Predictor) -> Calibration | None:
    """The run's calibration for its current best checkpoint, fitted on the validation split when missing."""
    stamp = checkpoint_stamp(run)
    cal = calibration.load(run.dir, stamp)
    if cal is None and run.split("val"):
        logits, labels, _, _ = split_logits(run, predictor, "val")
        cal = calibration.calibrate(logits, labels, stamp)
        calibration.save(run.dir, cal)
    return cal


def evaluate(run: Run | str | Path, split: str = "val", device: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Accuracy, per-class precision/recall/F1, confusion matrix, mistakes and calibration on the run's own split.

    Confidences are calibrated (temperature fitted on the validation split; evaluating "val" refits it).
    """
    run = run if isinstance(run, Run) else load_run(run)
    predictor = Predictor.from_run(run, device) if split != "val" else Predictor(
        *model_parts(run), pick_device(device), run.info["config"]["backbone"])
    logits, labels, files, skipped = split_logits(run, predictor, split, progress)
    if split == "val":
        predictor.calibration = calibration.calibrate(logits, labels, checkpoint_stamp(run))
        calibration.save(run.dir, predictor.calibration)
    probs = (logits / predictor.temperature).softmax(1)
    classes = run.classes
    preds = []
    for path, label, p in zip(files, labels.tolist(), probs):
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
    return Evaluation(split, classes, accuracy, per_class, cm.tolist(), mistakes, preds, skipped,
                      round(calibration.ece(logits.softmax(1), labels), 6), round(calibration.ece(probs, labels), 6),
                      predictor.temperature, predictor.threshold)


def model_parts(run: Run, which: str = "best") -> tuple[nn.Module, list[str], Preprocessing]:
    """(model, classes, preprocessing) of a run's checkpoint, built offline from its state dict."""
    info = run.info
    model = build_model(info["config"]["backbone"], len(info["classes"]), info["head"], run.model_state(which),
                        str(run.dir / f"{which}.safetensors"))
    return model, info["classes"], Preprocessing(**info["preprocessing"])
