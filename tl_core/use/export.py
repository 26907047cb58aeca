"""A model file that runs anywhere: safetensors, ONNX (float or int8) or TorchScript in a zip with classes,
preprocessing and MODEL_CARD.md, each run after writing and compared with TL Studio's own predictions.

The ONNX files take the decoded picture (uint8 N x H x W x 3, any size) and hold the run's resize, crop and
normalisation (`onnx_pictures`); safetensors and TorchScript map a normalised N x 3 x crop x crop float batch.
All output calibrated probabilities (softmax(logits / T), T fitted on the validation split), exactly what the
Predict page shows.
When the run has a familiarity reference (tl_core.use.familiarity), the zip carries it too, with its threshold
in model.json, so a picture of none of the classes can be answered "unsure" outside TL Studio as well.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from safetensors.torch import load, save_file
from torch import nn

from tl_core.config import EXPORT_FORMATS
from tl_core.data import targets
from tl_core.data.images import BadImage
from tl_core.data.pipeline import decode_filled
from tl_core.data.sources import Sample
from tl_core.devices import pick_device
from tl_core.models.backbones import Preprocessing
from tl_core.train.runs import Run, load_run
from tl_core.use import familiarity, model_card, onnx_pictures
from tl_core.use.calibration import Calibration
from tl_core.use.label_sets import LabelThresholds
from tl_core.use.predict import Predictor, build_model

FORMATS = EXPORT_FORMATS
FORMAT_TAG = "tl-studio-model/1"
MODEL_FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "onnx-int8": "model.onnx", "torchscript": "model.pt"}
TOLERANCE = 1e-3  # max abs difference of probabilities allowed between a tensor-input file and TL Studio
PICTURE_TOLERANCE = 0.01  # ... for the pictures-in ONNX file, whose resize is onnxruntime's, not torch's
INT8_ACCURACY_DROP = 0.01  # validation accuracy the int8 file may lose against the float one (or one picture of few)
INT8_SIZE_SHARE = 0.35  # largest int8 file size as a share of the float one
CHECK_IMAGES = 16
CHECK_PICTURES = 200  # validation pictures the ONNX files are run on (all of a small split)
CALIBRATION_PICTURES = 64  # training pictures the int8 ranges are calibrated on
MULTI_LABEL_OUTPUT = ("probabilities N x labels, one sigmoid per label (multi-label): a picture has every label whose "
                      "probability reaches its threshold in `label_thresholds`")
PICTURE_INPUT = "uint8 N x H x W x 3 RGB picture as decoded, any height and width (input name `pixels`)"


class ExportError(RuntimeError):
    """An export that cannot be written or did not reproduce TL Studio's predictions; nothing is left behind."""


class Probabilities(nn.Module):
    """The trained network plus temperature and softmax (a sigmoid per label for a multi-label run): what the
    exported file computes."""

    def __init__(self, model: nn.Module, temperature: float, multi_label: bool = False):
        super().__init__()
        self.model, self.multi_label = model, multi_label
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x) / self.temperature
        return logits.sigmoid() if self.multi_label else logits.softmax(1)


@dataclass(frozen=True)
class PictureCheck:
    """The pictures-in ONNX file against `Predictor.predict` on the same decoded validation pictures."""

    pictures: int
    same_top1: int
    max_abs_diff: float
    tolerance: float = PICTURE_TOLERANCE

    def describe(self) -> str:
        return (f"run on {self.pictures} validation pictures: same top-1 as TL Studio on {self.same_top1}, max "
                f"probability difference {self.max_abs_diff:.1e} (limit {self.tolerance:.0e})")


@dataclass(frozen=True)
class Int8Check:
    """The int8 file against the float one: validation accuracy, file size and time per picture on this CPU."""

    pictures: int
    accuracy_float: float
    accuracy_int8: float
    size_float: int
    size_int8: int
    seconds_float: float
    seconds_int8: float

    @property
    def speedup(self) -> float:
        return self.seconds_float / self.seconds_int8

    def to_dict(self) -> dict:
        return {**asdict(self), "size_share": self.size_int8 / self.size_float, "speedup": self.speedup}

    def describe(self) -> str:
        return (f"validation accuracy {self.accuracy_int8:.1%} (float {self.accuracy_float:.1%}, {self.pictures} "
                f"pictures); {self.size_int8 / 1e6:.1f} MB = {self.size_int8 / self.size_float:.0%} of the float file; "
                f"{self.seconds_int8 * 1e3:.1f} ms per picture vs {self.seconds_float * 1e3:.1f} ms float "
                f"({self.speedup:.2f}x) on the exporting CPU")


def export(run: Run | str | Path, dest: str | Path, fmt: str = "safetensors") -> Path:
    """Write `dest` (.zip) atomically; returns it. Raises ExportError (dest untouched, no temp files) on failure."""
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    run = run if isinstance(run, Run) else load_run(run)
    dest = Path(dest)
    if dest.is_dir():
        raise ExportError(f"{dest} is a folder; give a file name for the model, e.g. {dest / (run.id + '.zip')}.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_run(run, "cpu")
    predictor.dtype = None  # the reference is full float32, like the exported file
    meta = _meta(run, predictor, fmt)
    tmp = dest.with_name(dest.name + ".tmp")
    work = Path(tempfile.mkdtemp(prefix="tl-export-"))
    try:
        model_file = work / MODEL_FILES[fmt]
        net = Probabilities(predictor.model.float().to(memory_format=torch.contiguous_format), predictor.temperature,
                            run.multi_label)
        if fmt.startswith("onnx"):
            meta["check"] = _export_onnx(net.eval(), model_file, run, predictor, meta, int8=fmt == "onnx-int8")
        else:
            WRITERS[fmt](net.eval(), model_file, predictor.prep.crop)
            meta["check"] = check(model_file, fmt, predictor, _check_batch(run, predictor), meta)
        card = model_card.render(model_card.facts(run), fmt, file_section(meta), example(fmt, predictor.prep.fit))
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(model_file, MODEL_FILES[fmt])
            zf.writestr("model.json", json.dumps(meta, indent=1))
            if predictor.familiarity is not None:
                zf.writestr(familiarity.FILE, predictor.familiarity.to_bytes())
            zf.writestr("MODEL_CARD.md", card)
        tmp.replace(dest)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise e if isinstance(e, ExportError) else ExportError(f"Export to {fmt} failed: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _meta(run: Run, predictor: Predictor, fmt: str) -> dict:
    info = run.info
    pictures_in = fmt.startswith("onnx")
    return {"format": FORMAT_TAG, "file": MODEL_FILES[fmt], "file_format": fmt, "backbone": info["config"]["backbone"],
            "strategy": info["config"]["strategy"], "head": info["head"], "classes": info["classes"],
            "preprocessing": info["preprocessing"],
            "input": PICTURE_INPUT if pictures_in else "float32 N x 3 x crop x crop, RGB / 255, minus mean, divided by std",
            "preprocessing_in_file": pictures_in,
            "output": MULTI_LABEL_OUTPUT if run.multi_label else "probabilities N x classes (temperature-calibrated softmax)",
            "multi_label": run.multi_label, "label_thresholds": predictor.thresholds if run.multi_label else None,
            "temperature": predictor.temperature, "unsure_below": predictor.threshold, "run": run.id,
            "calibration": predictor.calibration.to_dict() if predictor.calibration else None,
            "familiarity": _familiarity_meta(predictor), "best_val_accuracy": run.accuracy().value}


def _familiarity_meta(predictor: Predictor) -> dict | None:
    """How to tell a picture of none of the classes: what the reference file holds and the distance threshold."""
    fam = predictor.familiarity
    if fam is None:
        return None
    return {"file": familiarity.FILE, "head": predictor.head, "k": familiarity.K, "unsure_beyond": fam.threshold,
            "how": "features = the input of the head module; distance = 1 - mean cosine similarity to the k nearest "
                   "rows of `reference` (unit-length training embeddings); beyond `unsure_beyond` the answer is unsure"}


def _check_batch(run: Run, predictor: Predictor) -> torch.Tensor:
    """Normalised validation images (training images when there is no validation split)."""
    items = (run.split("val") or run.split("train"))[:CHECK_IMAGES]
    u8, failed, _ = decode_filled([Sample(p, y, "val") for p, y in items], predictor.prep)
    keep = [i for i in range(len(items)) if i not in set(failed)]
    if not keep:
        raise ExportError(f"Run {run.id} has no readable validation image to check the export on.")
    return predictor.batcher.eval(u8[keep]).float().contiguous()


def _check_pictures(run: Run) -> tuple[list[np.ndarray], np.ndarray]:
    """Decoded validation pictures (training ones when there is no validation split) and their labels (multi-hot
    rows for a multi-label run)."""
    pictures, labels = [], []
    for path, label in (run.split("val") or run.split("train"))[:CHECK_PICTURES]:
        try:
            pictures.append(onnx_pictures.picture(path))
            labels.append(label)
        except (BadImage, OSError):
            continue
    if not pictures:
        raise ExportError(f"Run {run.id} has no readable validation picture to check the export on.")
    return pictures, run.targets.tensor(labels, len(run.classes)).numpy()


def _calibration_batches(run: Run, predictor: Predictor) -> list[np.ndarray]:
    """Normalised training pictures for the int8 ranges (unreadable ones dropped), in batches of 16."""
    items = run.split("train")[:CALIBRATION_PICTURES]
    u8, failed, _ = decode_filled([Sample(p, y, "train") for p, y in items], predictor.prep)
    keep = [i for i in range(len(items)) if i not in set(failed)]
    x = predictor.batcher.eval(u8[keep]).float().contiguous().numpy()
    return [x[i : i + 16] for i in range(0, len(x), 16)]


def _pictures_model(network: Path, predictor: Predictor, meta: dict) -> onnx.ModelProto:
    extra = {"format": FORMAT_TAG, "run": meta["run"], "temperature": str(meta["temperature"]),
             "unsure_below": str(meta["unsure_below"]), "preprocessing": json.dumps(meta["preprocessing"]),
             "multi_label": json.dumps(meta["multi_label"]), "label_thresholds": json.dumps(meta["label_thresholds"])}
    return onnx_pictures.add_preprocessing(onnx.load(str(network)), predictor.prep, predictor.classes, extra)


def _export_onnx(net: Probabilities, path: Path, run: Run, predictor: Predictor, meta: dict, int8: bool) -> dict:
    """Write the pictures-in file (int8 network when asked) and check it; returns the check as a dict."""
    network = path.with_name("network.onnx")
    _write_onnx(net, network, predictor.prep.crop)
    pictures, labels = _check_pictures(run)
    float_model = _pictures_model(network, predictor, meta)
    if not int8:
        onnx.save(float_model, str(path))
        return asdict(check_pictures(path, predictor, pictures))
    quantized = path.with_name("network-int8.onnx")
    onnx_pictures.quantize_network(network, quantized, _calibration_batches(run, predictor))
    onnx.save(_pictures_model(quantized, predictor, meta), str(path))
    return check_int8(path, float_model.SerializeToString(), pictures, labels, meta["label_thresholds"]).to_dict()


def check_pictures(path: Path, predictor: Predictor, pictures: list[np.ndarray]) -> PictureCheck:
    """The file on decoded pictures against `predict` on the same pictures; a different top-1 or more than
    PICTURE_TOLERANCE is an ExportError."""
    from PIL import Image

    got = onnx_pictures.probabilities(path, pictures)
    index = {c: i for i, c in enumerate(predictor.classes)}
    expected = np.zeros_like(got)
    for row, p in enumerate(predictor.predict([Image.fromarray(x[0]) for x in pictures], len(predictor.classes))):
        for c, v in p.top:
            expected[row, index[c]] = v
    result = PictureCheck(len(pictures), int((got.argmax(1) == expected.argmax(1)).sum()), float(np.abs(got - expected).max()))
    if result.same_top1 < result.pictures or not result.max_abs_diff <= PICTURE_TOLERANCE:
        raise ExportError(f"The onnx file predicts differently from TL Studio: {result.describe()}.")
    return result


def check_int8(path: Path, float_model: bytes, pictures: list[np.ndarray], labels: np.ndarray,
               thresholds: list[float] | None = None) -> Int8Check:
    """Accuracy (exact-set accuracy at `thresholds` for multi-hot `labels`), size and speed of the int8 file against
    the float one; a larger drop or file is an ExportError."""
    def accuracy_of(model: bytes | Path) -> float:
        probs = onnx_pictures.probabilities(model, pictures)
        if thresholds is not None:
            return float(((probs >= np.asarray(thresholds)) == (labels > 0.5)).all(1).mean())
        return float((probs.argmax(1) == labels).mean())

    accuracy = [accuracy_of(m) for m in (float_model, path)]
    timed = pictures[:32]
    result = Int8Check(len(pictures), accuracy[0], accuracy[1], len(float_model), path.stat().st_size,
                       onnx_pictures.seconds_per_picture(float_model, timed), onnx_pictures.seconds_per_picture(path, timed))
    if result.accuracy_int8 < result.accuracy_float - max(INT8_ACCURACY_DROP, 1.5 / len(pictures)):  # one picture of a few
        raise ExportError(f"The int8 file loses too much accuracy: {result.describe()}.")
    if result.size_int8 > INT8_SIZE_SHARE * result.size_float:
        raise ExportError(f"The int8 file is not small enough (limit {INT8_SIZE_SHARE:.0%}): {result.describe()}.")
    return result


# ---------------------------------------------------------------- writers


def _write_safetensors(net: Probabilities, path: Path, crop: int) -> None:
    save_file({k: v.contiguous() for k, v in net.model.state_dict().items()}, path)


def _write_onnx(net: Probabilities, path: Path, crop: int) -> None:
    """The network part of the ONNX files (input `image`, normalised float); `onnx_pictures` puts pixels in front."""
    x = torch.zeros(2, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # keep `--json` output clean
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), path, dynamo=True, verbose=False, input_names=[onnx_pictures.NETWORK_INPUT],
                          output_names=[onnx_pictures.OUTPUT], dynamic_shapes={"x": {0: batch}}, external_data=False)


def _write_torchscript(net: Probabilities, path: Path, crop: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, but still what C++/mobile load
        torch.jit.save(torch.jit.trace(net, torch.zeros(2, 3, crop, crop)), str(path))


WRITERS: dict[str, Callable[[Probabilities, Path, int], None]] = {
    "safetensors": _write_safetensors, "torchscript": _write_torchscript}


# ---------------------------------------------------------------- runners: the written file, loaded as a user would


def run_file(path: Path, fmt: str, x: np.ndarray, meta: dict) -> np.ndarray:
    """Probabilities of a tensor-input file alone (torch.jit for TorchScript, build_model for safetensors)."""
    with torch.no_grad():
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")(torch.from_numpy(x)).numpy()
        model = build_model(meta["backbone"], len(meta["classes"]), meta["head"], load(path.read_bytes()))
        return Probabilities(model, meta["temperature"], meta.get("multi_label", False))(torch.from_numpy(x)).numpy()


def check(path: Path, fmt: str, predictor: Predictor, x: torch.Tensor, meta: dict) -> dict:
    """Run the file on `x` and compare with TL Studio's probabilities; over TOLERANCE is an ExportError."""
    with torch.no_grad():
        expected = Probabilities(predictor.model, predictor.temperature, predictor.targets.multi_label).eval()(x).numpy()
    got = run_file(path, fmt, x.numpy(), meta)
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not diff <= TOLERANCE:
        raise ExportError(f"The {fmt} file predicts differently from TL Studio: max probability difference "
                          f"{diff:.2e} > {TOLERANCE:.0e} on {len(x)} validation images.")
    return {"images": len(x), "max_abs_diff": diff, "tolerance": TOLERANCE}


def load_meta(path: str | Path) -> dict:
    """model.json of an export: classes, preprocessing, and the after-writing check."""
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("model.json"))


def load_check(path: str | Path) -> dict:
    """The after-writing check recorded in an export (fields depend on the format)."""
    return load_meta(path)["check"]


def load_card(path: str | Path) -> str:
    with zipfile.ZipFile(path) as zf:
        return zf.read("MODEL_CARD.md").decode()


def load_export(path: str | Path, device: str | None = None) -> Predictor:
    """A Predictor from an exported safetensors .zip (nothing is unpickled)."""
    with zipfile.ZipFile(path) as zf:
        meta = json.loads(zf.read("model.json"))
        if meta.get("format") != FORMAT_TAG or meta.get("file", MODEL_FILES["safetensors"]) != MODEL_FILES["safetensors"]:
            raise ValueError(f"{path} is not a TL Studio safetensors export.")
        state = load(zf.read("model.safetensors"))
        fam = familiarity.from_bytes(zf.read(familiarity.FILE)) if meta.get("familiarity") else None
    model = build_model(meta["backbone"], len(meta["classes"]), meta["head"], state)
    cal = Calibration(**meta["calibration"]) if meta.get("calibration") else None
    multi = bool(meta.get("multi_label"))
    cuts = LabelThresholds(meta["label_thresholds"], 0.0) if multi and meta.get("label_thresholds") else None
    return Predictor(model, meta["classes"], Preprocessing.from_dict(meta["preprocessing"]), pick_device(device), meta["backbone"], cal,
                     meta["head"], fam, targets.of(multi), cuts)


# ---------------------------------------------------------------- the card's file section and examples

_OPEN = """from PIL import Image
z = zipfile.ZipFile("model.zip"); meta = json.loads(z.read("model.json")); p = meta["preprocessing"]
"""
_TO_ARRAY = """x = x.transpose(2, 0, 1)[None].astype(np.float32)
"""
PREPARE = {  # the run's `fit`: pipeline.centre_square or pipeline.letterbox, in Pillow
    "crop": _OPEN + """img = Image.open("photo.jpg").convert("RGB"); s = p["resize"] / min(img.size)
img = img.resize((round(img.width * s), round(img.height * s)), Image.BILINEAR)
l, t = (img.width - p["crop"]) // 2, (img.height - p["crop"]) // 2
x = (np.asarray(img.crop((l, t, l + p["crop"], t + p["crop"])), np.float32) / 255 - p["mean"]) / p["std"]
""" + _TO_ARRAY,
    "letterbox": _OPEN + """img = Image.open("photo.jpg").convert("RGB"); s = p["crop"] / max(img.size)
img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BILINEAR)
box = Image.new("RGB", (p["crop"], p["crop"]), tuple(round(255 * m) for m in p["mean"]))  # padded: the mean colour
box.paste(img, (round((p["crop"] - img.width) / 2), round((p["crop"] - img.height) / 2)))
x = ((np.asarray(box, np.float32) / 255 - p["mean"]) / p["std"]).transpose(2, 0, 1)[None].astype(np.float32)
""",
}

_ONNX = """import zipfile, numpy as np, onnxruntime as ort
from PIL import Image
model = ort.InferenceSession(zipfile.ZipFile("model.zip").read("model.onnx"))
classes = model.get_modelmeta().custom_metadata_map["classes"].split("\\n")
pixels = np.asarray(Image.open("photo.jpg").convert("RGB"))[None]  # any size: the preprocessing is in the file
probs = model.run(None, {"pixels": pixels})[0][0]
print(classes[probs.argmax()], probs.max())
"""

_RUN = {
    "torchscript": "probs = torch.jit.load(io.BytesIO(z.read(\"model.pt\")))(torch.from_numpy(x))[0].detach().numpy()\n"
    + "print(meta[\"classes\"][probs.argmax()], probs.max())\n",
    "safetensors": "from safetensors.torch import load  # the head is a new Linear/Conv with len(classes) outputs at meta['head']\n"
    + "net = torchvision.models.get_model(meta['backbone'], num_classes=len(meta['classes'])).eval()\n"
    + "net.load_state_dict(load(z.read('model.safetensors')))\n"
    + "probs = (net(torch.from_numpy(x)) / meta['temperature']).softmax(1)[0].detach().numpy()\n"
    + "print(meta[\"classes\"][probs.argmax()], probs.max())\n",
}
_IMPORTS = {"torchscript": "import io, json, zipfile, numpy as np, torch\n",
            "safetensors": "import json, zipfile, numpy as np, torch, torchvision\n"}


def example(fmt: str, fit: str) -> str:
    """The card's minimal example: the ONNX files hold their preprocessing; the tensor files need the run's own
    (`fit`) written out before the network runs."""
    if fmt.startswith("onnx"):
        return _ONNX
    return _IMPORTS[fmt] + PREPARE[fit] + _RUN[fmt]


def describe_check(meta: dict) -> str:
    c = meta["check"]
    if meta["file_format"] == "onnx":
        return PictureCheck(**c).describe()
    if meta["file_format"] == "onnx-int8":
        return Int8Check(**{k: v for k, v in c.items() if k not in ("size_share", "speedup")}).describe()
    return f"run on {c['images']} validation images, max probability difference from TL Studio {c['max_abs_diff']:.1e} " \
           f"(limit {c['tolerance']:.0e})"


def file_section(meta: dict) -> str:
    cuts = (f"- Multi-label: label thresholds {', '.join(f'{t:.3f}' for t in meta['label_thresholds'])} (output order).\n"
            if meta.get("multi_label") else "")
    return f"""- `{meta["file"]}`: the network. Input: {meta["input"]}. Output `probabilities`: {meta["output"]},
  temperature {meta["temperature"]:.4f}.
{cuts}- `model.json`: classes (output order), preprocessing, temperature, unsure threshold, this check.
{_familiarity_readme(meta)}- Checked after writing: {describe_check(meta)}."""


def _familiarity_readme(meta: dict) -> str:
    fam = meta.get("familiarity")
    if not fam:
        return ""
    return (f"- `{fam['file']}`: training embeddings (`reference`); a picture whose features (the input of "
            f"`{fam['head']}`) are at mean cosine distance over {fam['unsure_beyond']:.3f} from their {fam['k']} nearest "
            "rows looks like none of the classes: answer \"unsure\".\n")
