"""A model file that runs anywhere: safetensors, ONNX or TorchScript in a zip with classes, preprocessing and
a README, each run after writing on validation images and compared with TL Studio's own probabilities.

The exported network maps a normalised N x 3 x crop x crop float batch to calibrated probabilities
(softmax(logits / T), the temperature fitted on the validation split), exactly what the Predict page shows.
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
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load, save_file
from torch import nn

from tl_core.data.pipeline import decode_filled
from tl_core.data.sources import Sample
from tl_core.devices import pick_device
from tl_core.models.backbones import Preprocessing
from tl_core.train.runs import Run, load_run
from tl_core.use import familiarity
from tl_core.use.calibration import Calibration
from tl_core.use.predict import Predictor, build_model

FORMATS = ("safetensors", "onnx", "torchscript")
FORMAT_TAG = "tl-studio-model/1"
MODEL_FILES = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torchscript": "model.pt"}
TOLERANCE = 1e-3  # max abs difference of probabilities allowed between the file and TL Studio
CHECK_IMAGES = 16


class ExportError(RuntimeError):
    """An export that cannot be written or did not reproduce TL Studio's predictions; nothing is left behind."""


class Probabilities(nn.Module):
    """The trained network plus temperature and softmax: what the exported file computes."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.model(x) / self.temperature).softmax(1)


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
        net = Probabilities(predictor.model.float().to(memory_format=torch.contiguous_format), predictor.temperature)
        WRITERS[fmt](net.eval(), model_file, predictor.prep.crop)
        meta["check"] = check(model_file, fmt, predictor, _check_batch(run, predictor), meta)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(model_file, MODEL_FILES[fmt])
            zf.writestr("model.json", json.dumps(meta, indent=1))
            if predictor.familiarity is not None:
                zf.writestr(familiarity.FILE, predictor.familiarity.to_bytes())
            zf.writestr("README.md", readme(fmt, meta))
        tmp.replace(dest)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise e if isinstance(e, ExportError) else ExportError(f"Export to {fmt} failed: {e}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def _meta(run: Run, predictor: Predictor, fmt: str) -> dict:
    info = run.info
    return {"format": FORMAT_TAG, "file": MODEL_FILES[fmt], "file_format": fmt, "backbone": info["config"]["backbone"],
            "head": info["head"], "classes": info["classes"], "preprocessing": info["preprocessing"],
            "input": "float32 N x 3 x crop x crop, RGB / 255, minus mean, divided by std",
            "output": "probabilities N x classes (temperature-calibrated softmax)",
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
    u8, failed, _ = decode_filled([Sample(p, y, "val") for p, y in items], predictor.prep.resize)
    keep = [i for i in range(len(items)) if i not in set(failed)]
    if not keep:
        raise ExportError(f"Run {run.id} has no readable validation image to check the export on.")
    return predictor.batcher.eval(u8[keep]).float().contiguous()


# ---------------------------------------------------------------- writers


def _write_safetensors(net: Probabilities, path: Path, crop: int) -> None:
    save_file({k: v.contiguous() for k, v in net.model.state_dict().items()}, path)


def _write_onnx(net: Probabilities, path: Path, crop: int) -> None:
    x = torch.zeros(2, 3, crop, crop)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # keep `--json` output clean
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), path, dynamo=True, verbose=False, input_names=["image"],
                          output_names=["probabilities"], dynamic_shapes={"x": {0: batch}}, external_data=False)


def _write_torchscript(net: Probabilities, path: Path, crop: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, but still what C++/mobile load
        torch.jit.save(torch.jit.trace(net, torch.zeros(2, 3, crop, crop)), str(path))


WRITERS: dict[str, Callable[[Probabilities, Path, int], None]] = {
    "safetensors": _write_safetensors, "onnx": _write_onnx, "torchscript": _write_torchscript}


# ---------------------------------------------------------------- runners: the written file, loaded as a user would


def run_file(path: Path, fmt: str, x: np.ndarray, meta: dict) -> np.ndarray:
    """Probabilities from the written model file alone (onnxruntime for ONNX, torch.jit for TorchScript)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": x})[0]
    with torch.no_grad():
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")(torch.from_numpy(x)).numpy()
        model = build_model(meta["backbone"], len(meta["classes"]), meta["head"], load(path.read_bytes()))
        return Probabilities(model, meta["temperature"])(torch.from_numpy(x)).numpy()


def check(path: Path, fmt: str, predictor: Predictor, x: torch.Tensor, meta: dict) -> dict:
    """Run the file on `x` and compare with TL Studio's probabilities; over TOLERANCE is an ExportError."""
    with torch.no_grad():
        expected = Probabilities(predictor.model, predictor.temperature).eval()(x).numpy()
    got = run_file(path, fmt, x.numpy(), meta)
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not diff <= TOLERANCE:
        raise ExportError(f"The {fmt} file predicts differently from TL Studio: max probability difference "
                          f"{diff:.2e} > {TOLERANCE:.0e} on {len(x)} validation images.")
    return {"images": len(x), "max_abs_diff": diff, "tolerance": TOLERANCE}


def load_check(path: str | Path) -> dict:
    """The after-writing check recorded in an export: images, max_abs_diff, tolerance."""
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("model.json"))["check"]


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
    return Predictor(model, meta["classes"], Preprocessing(**meta["preprocessing"]), pick_device(device), meta["backbone"], cal,
                     meta["head"], fam)


# ---------------------------------------------------------------- README inside the zip

_PREPARE = """from PIL import Image
z = zipfile.ZipFile("model.zip"); meta = json.loads(z.read("model.json")); p = meta["preprocessing"]
img = Image.open("photo.jpg").convert("RGB"); s = p["resize"] / min(img.size)
img = img.resize((round(img.width * s), round(img.height * s)), Image.BILINEAR)
l, t = (img.width - p["crop"]) // 2, (img.height - p["crop"]) // 2
x = (np.asarray(img.crop((l, t, l + p["crop"], t + p["crop"])), np.float32) / 255 - p["mean"]) / p["std"]
x = x.transpose(2, 0, 1)[None].astype(np.float32)
"""

EXAMPLES = {
    "onnx": "import json, zipfile, numpy as np, onnxruntime as ort\n" + _PREPARE
    + "probs = ort.InferenceSession(z.read(\"model.onnx\")).run(None, {\"image\": x})[0][0]\n",
    "torchscript": "import io, json, zipfile, numpy as np, torch\n" + _PREPARE
    + "probs = torch.jit.load(io.BytesIO(z.read(\"model.pt\")))(torch.from_numpy(x))[0].detach().numpy()\n",
    "safetensors": "import json, zipfile, numpy as np, torch, torchvision\n" + _PREPARE
    + "from safetensors.torch import load  # the head is a new Linear/Conv with len(classes) outputs at meta['head']\n"
    + "net = torchvision.models.get_model(meta['backbone'], num_classes=len(meta['classes'])).eval()\n"
    + "net.load_state_dict(load(z.read('model.safetensors')))\n"
    + "probs = (net(torch.from_numpy(x)) / meta['temperature']).softmax(1)[0].detach().numpy()\n",
}


def readme(fmt: str, meta: dict) -> str:
    check = meta["check"]
    return f"""# {meta["run"]}: {meta["backbone"]} fine-tuned by TL Studio ({fmt})

Classes ({len(meta["classes"])}): {", ".join(meta["classes"])}

- `{meta["file"]}`: the network. Input `image`: {meta["input"]}. Output: {meta["output"]}.
- `model.json`: classes (output order), preprocessing (resize the short side to `resize`, centre-crop `crop`,
  ImageNet `mean`/`std`), temperature {meta["temperature"]:.4f}; answer "unsure" below {meta["unsure_below"]:.1%}.
{_familiarity_readme(meta)}- Checked after writing: run on {check["images"]} validation images, max probability difference from TL Studio
  {check["max_abs_diff"]:.1e} (limit {check["tolerance"]:.0e}).

## Loading example (Python)

```python
{EXAMPLES[fmt]}print(meta["classes"][probs.argmax()], probs.max())
```
"""


def _familiarity_readme(meta: dict) -> str:
    fam = meta.get("familiarity")
    if not fam:
        return ""
    return (f"- `{fam['file']}`: training embeddings (`reference`); a picture whose features (the input of "
            f"`{fam['head']}`) are at mean cosine distance over {fam['unsure_beyond']:.3f} from their {fam['k']} nearest "
            "rows looks like none of the classes: answer \"unsure\".\n")
