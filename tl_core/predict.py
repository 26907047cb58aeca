"""Use a trained run: predict images, evaluate a split, export a checked model file."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from tl_core import backbones
from tl_core.backbones import Preprocessing
from tl_core.devices import fast_dtype, pick_device
from tl_core.images import IMAGE_EXTENSIONS, BadImage, is_hidden, open_rgb, to_rgb
from tl_core.pipeline import Batcher, decode_square, square
from tl_core.runs import Run, load_run

ImageInput = str | Path | Image.Image | BinaryIO


@dataclass
class Prediction:
    file: str
    top: list[tuple[str, float]]
    error: str | None = None

    def to_dict(self) -> dict:
        return {"file": self.file, "top": [list(t) for t in self.top], **({"error": self.error} if self.error else {})}


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
    def __init__(self, model: nn.Module, classes: list[str], prep: Preprocessing, device: torch.device):
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.classes, self.prep, self.device = classes, prep, device
        self.batcher = Batcher(prep, device, "none")
        self.dtype = fast_dtype(device)

    @classmethod
    def from_run(cls, run: Run | str | Path, device: str | None = None, which: str = "best") -> Predictor:
        run = run if isinstance(run, Run) else load_run(run)
        info = run.info
        model = build_model(info["config"]["backbone"], len(info["classes"]), info["head"], run.model_state(which),
                            str(run.dir / f"{which}.safetensors"))
        return cls(model, info["classes"], Preprocessing(**info["preprocessing"]), pick_device(device))

    def probabilities(self, u8: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        out = []
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            for i in range(0, len(u8), batch_size):
                out.append(self.model(self.batcher.eval(u8[i : i + batch_size])).float().softmax(1).cpu())
        return torch.cat(out) if out else torch.empty(0, len(self.classes))

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


def expand_inputs(items: Sequence[str]) -> list[str]:
    """Files as given; folders become their image files (recursively, hidden ones skipped)."""
    out = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                          and not any(is_hidden(x) for x in f.relative_to(p).parts))
        elif p.exists():
            out.append(str(p))
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

    def to_dict(self) -> dict:
        return asdict(self)

    def cell(self, true: str, predicted: str) -> list[dict]:
        """The images behind one confusion-matrix cell, most confident first."""
        rows = [p for p in self.predictions if p["true"] == true and p["predicted"] == predicted]
        return sorted(rows, key=lambda p: -p["confidence"])


def evaluate(run: Run | str | Path, split: str = "val", device: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Accuracy, per-class precision/recall/F1, confusion matrix and mistakes on the run's own split."""
    run = run if isinstance(run, Run) else load_run(run)
    items = run.split(split)
    if not items:
        raise ValueError(f"Run {run.id} has no {split!r} split.")
    predictor = Predictor.from_run(run, device)
    size = predictor.prep.resize
    preds, skipped = [], []
    for start in range(0, len(items), 64):
        chunk, arrays = items[start : start + 64], []
        kept = []
        for path, label in chunk:
            try:
                arrays.append(decode_square(path, size))
                kept.append((path, label))
            except (BadImage, OSError) as e:
                skipped.append({"file": path, "reason": str(e)})
        if arrays:
            probs = predictor.probabilities(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))
            for (path, label), p in zip(kept, probs):
                j = int(p.argmax())
                preds.append({"file": path, "true": run.classes[label], "predicted": run.classes[j],
                              "confidence": round(float(p[j]), 6), "true_probability": round(float(p[label]), 6)})
        if progress:
            progress(min(start + 64, len(items)), len(items))
    classes = run.classes
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
    return Evaluation(split, classes, accuracy, per_class, cm.tolist(), mistakes, preds, skipped)


def export(run: Run | str | Path, dest: str | Path) -> Path:
    """A self-contained .zip (model.safetensors + model.json), re-loaded and checked after writing."""
    run = run if isinstance(run, Run) else load_run(run)
    info = run.info
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    state = run.model_state("best")
    meta = {"format": "tl-studio-model/1", "backbone": info["config"]["backbone"], "head": info["head"],
            "classes": info["classes"], "preprocessing": info["preprocessing"], "run": run.id,
            "best_val_accuracy": run.summary.get("best_val_accuracy")}
    tmp_weights = dest.with_suffix(".safetensors.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_weights)
    tmp = dest.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(tmp_weights, "model.safetensors")
        zf.writestr("model.json", json.dumps(meta, indent=1))
    tmp_weights.unlink()
    check_export(tmp, state, meta)
    tmp.replace(dest)
    return dest


def load_export(path: str | Path, device: str | None = None) -> Predictor:
    """A Predictor from an exported .zip (safetensors only: nothing is unpickled)."""
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("model.json"))
        if meta.get("format") != "tl-studio-model/1":
            raise ValueError(f"{path} is not a TL Studio model export.")
        from safetensors.torch import load

        state = load(zf.read("model.safetensors"))
    model = build_model(meta["backbone"], len(meta["classes"]), meta["head"], state)
    return Predictor(model, meta["classes"], Preprocessing(**meta["preprocessing"]), pick_device(device))


def check_export(path: Path, state: dict[str, torch.Tensor], meta: dict) -> None:
    """Every tensor identical and the re-loaded model gives the same outputs as the original."""
    reloaded = load_export(path, "cpu")
    again = reloaded.model.state_dict()
    bad = [k for k, v in state.items() if k not in again or not torch.equal(again[k].cpu(), v.cpu())]
    if bad:
        raise RuntimeError(f"Export check failed: {len(bad)} tensors differ after writing (e.g. {bad[0]}).")
    original = build_model(meta["backbone"], len(meta["classes"]), meta["head"], state)
    x = torch.randn(2, 3, meta["preprocessing"]["crop"], meta["preprocessing"]["crop"], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        if not torch.allclose(original(x), reloaded.model.float()(x.contiguous(memory_format=torch.channels_last)), atol=1e-4):
            raise RuntimeError("Export check failed: the re-loaded model predicts differently.")
