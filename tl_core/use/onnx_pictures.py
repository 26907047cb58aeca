"""ONNX files that take the decoded picture itself: uint8 N x H x W x 3 of any size in, probabilities out.

Whoever receives the model has nothing to re-implement: the run's resize (bilinear, antialiased), centre crop or
letterbox padding, and normalisation are nodes in front of the network, computed from the input's own height and
width exactly as `tl_core.data.pipeline.square` and `Batcher.eval` do (round half to even, the resized pixels
rounded to uint8). The int8 variant quantizes only the network (static, calibrated on training pictures); the
preprocessing stays float so every picture size keeps working.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tl_core.data.images import open_rgb
from tl_core.models.backbones import Preprocessing

INPUT = "pixels"  # uint8 N x H x W x 3 (RGB, as decoded)
NETWORK_INPUT = "image"  # what the network part reads: float32 N x 3 x crop x crop, normalised
OUTPUT = "probabilities"
MIN_OPSET = 18  # Resize with antialias


def _const(name: str, value, dtype=np.int64) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def preprocessing_nodes(prep: Preprocessing) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes from INPUT to NETWORK_INPUT, with their constants: the run's `Preprocessing` as a graph (the picture
    to its square as `prep.fit` says, then normalised as `Batcher.eval` does)."""
    p = "pre_"
    n = helper.make_node
    consts = [
        _const(p + "hw_idx", [1, 2]), _const(p + "nc", [3]), _const(p + "batch_idx", [0]), _const(p + "h_idx", [1]),
        _const(p + "second", [1]), _const(p + "resize", float(prep.resize), np.float64), _const(p + "two", 2.0, np.float64),
        _const(p + "axes", [2, 3]), _const(p + "lo", 0.0, np.float32), _const(p + "hi", 255.0, np.float32),
        _const(p + "mean", np.asarray(prep.mean).reshape(1, 3, 1, 1) * 255, np.float32),
        _const(p + "std", np.asarray(prep.std).reshape(1, 3, 1, 1) * 255, np.float32),
    ]
    nodes = [
        n("Shape", [INPUT], [p + "shape"]),
        n("Gather", [p + "shape", p + "hw_idx"], [p + "hw"], axis=0),
        n("Gather", [p + "shape", p + "batch_idx"], [p + "n"], axis=0),
        n("Gather", [p + "shape", p + "h_idx"], [p + "h"], axis=0),
        n("Cast", [p + "hw"], [p + "hw_f"], to=TensorProto.DOUBLE),
        n("Cast", [INPUT], [p + "f"], to=TensorProto.FLOAT),
        n("Transpose", [p + "f"], [p + "nchw"], perm=[0, 3, 1, 2]),
    ]
    fit_nodes, fit_consts = (_letterbox_nodes if prep.fit == "letterbox" else _crop_nodes)(prep, p)
    nodes += fit_nodes + [
        n("Sub", [p + "square", p + "mean"], [p + "centred"]),
        n("Div", [p + "centred", p + "std"], [NETWORK_INPUT]),
    ]
    return nodes, consts + fit_consts


def _resized_nodes(p: str, side: str, least: str) -> list[onnx.NodeProto]:
    """`pipeline._resized` to p+"u8": the picture's `side` (ReduceMin: short, ReduceMax: long) scaled to the
    resize, each side round(side * scale) and at least `least` px, in torch's two uint8 passes (width, then height,
    each rounded to whole grey levels as Pillow does)."""
    n = helper.make_node
    return [
        n(side, [p + "hw_f"], [p + "side"], keepdims=0),
        n("Div", [p + "resize", p + "side"], [p + "scale"]),
        n("Mul", [p + "hw_f", p + "scale"], [p + "scaled"]),
        n("Round", [p + "scaled"], [p + "rounded"]),
        n("Max", [p + "rounded", least], [p + "new_hw_f"]),
        n("Cast", [p + "new_hw_f"], [p + "new_hw"], to=TensorProto.INT64),
        n("Gather", [p + "new_hw", p + "second"], [p + "new_w"], axis=0),
        n("Concat", [p + "n", p + "nc", p + "h", p + "new_w"], [p + "sizes_w"], axis=0),
        n("Concat", [p + "n", p + "nc", p + "new_hw"], [p + "sizes"], axis=0),
        *_resize_to_uint8(p + "nchw", p + "sizes_w", p + "wide", p),
        *_resize_to_uint8(p + "wide", p + "sizes", p + "u8", p),
    ]


def _crop_nodes(prep: Preprocessing, p: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """`pipeline.centre_square` and `Batcher.eval`'s centre crop: short side to the resize, the crop cut from the
    middle (round half to even, as Python's round)."""
    n = helper.make_node
    consts = [_const(p + "inner", int(round((prep.resize - prep.crop) / 2))), _const(p + "crop", prep.crop)]
    return [
        *_resized_nodes(p, "ReduceMin", p + "resize"),  # max(size, round(side * scale))
        n("Sub", [p + "new_hw_f", p + "resize"], [p + "excess"]),
        n("Div", [p + "excess", p + "two"], [p + "half"]),
        n("Round", [p + "half"], [p + "outer_f"]),
        n("Cast", [p + "outer_f"], [p + "outer"], to=TensorProto.INT64),
        n("Add", [p + "outer", p + "inner"], [p + "start"]),
        n("Add", [p + "start", p + "crop"], [p + "end"]),
        n("Slice", [p + "u8", p + "start", p + "end", p + "axes"], [p + "square"]),
    ], consts


def _letterbox_nodes(prep: Preprocessing, p: str) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """`pipeline.letterbox`: long side to the resize, centred on a square of the fill colour. Pad takes one value
    for every channel, so the picture is shifted by the fill, padded with zeros and shifted back."""
    n = helper.make_node
    consts = [_const(p + "one", 1.0, np.float64), _const(p + "side_i", [prep.resize, prep.resize]),
              _const(p + "fill", np.asarray(prep.fill).reshape(1, 3, 1, 1), np.float32), _const(p + "zero", 0.0, np.float32)]
    return [
        *_resized_nodes(p, "ReduceMax", p + "one"),  # max(1, round(side * scale))
        n("Sub", [p + "side_i", p + "new_hw"], [p + "room"]),
        n("Cast", [p + "room"], [p + "room_f"], to=TensorProto.DOUBLE),
        n("Div", [p + "room_f", p + "two"], [p + "half"]),
        n("Round", [p + "half"], [p + "before_f"]),
        n("Cast", [p + "before_f"], [p + "before"], to=TensorProto.INT64),  # top, left
        n("Sub", [p + "room", p + "before"], [p + "after"]),  # bottom, right
        n("Concat", [p + "before", p + "after"], [p + "pads"], axis=0),
        n("Sub", [p + "u8", p + "fill"], [p + "shifted"]),
        n("Pad", [p + "shifted", p + "pads", p + "zero", p + "axes"], [p + "padded"], mode="constant"),
        n("Add", [p + "padded", p + "fill"], [p + "square"]),
    ], consts


def _resize_to_uint8(x: str, sizes: str, out: str, p: str) -> list[onnx.NodeProto]:
    """One antialiased bilinear pass to `sizes`, clipped and rounded to whole grey levels."""
    n = helper.make_node
    return [n("Resize", [x, "", "", sizes], [out + "_f"], mode="linear", antialias=1, coordinate_transformation_mode="half_pixel"),
            n("Clip", [out + "_f", p + "lo", p + "hi"], [out + "_c"]),
            n("Round", [out + "_c"], [out])]


def add_preprocessing(network: onnx.ModelProto, prep: Preprocessing, classes: Sequence[str],
                      metadata: dict[str, str]) -> onnx.ModelProto:
    """The network (input NETWORK_INPUT) with the preprocessing nodes in front; class names in its metadata."""
    model = onnx.ModelProto()
    model.CopyFrom(network)
    graph = model.graph
    nodes, consts = preprocessing_nodes(prep)
    old_inputs = [i for i in graph.input if i.name != NETWORK_INPUT]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["batch", "height", "width", 3]),
                        *old_inputs])
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + existing)
    graph.initializer.extend(consts)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < MIN_OPSET:
            opset.version = MIN_OPSET
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"classes": "\n".join(classes), **metadata})
    onnx.checker.check_model(model)
    return model


def class_names(model_path: str | Path) -> list[str]:
    """Class names (output order) from the file's metadata."""
    props = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    return props["classes"].split("\n")


def picture(path: str | Path) -> np.ndarray:
    """One picture as the file expects it: fully decoded RGB (EXIF orientation applied), 1 x H x W x 3 uint8."""
    return np.asarray(open_rgb(path))[None]


def inference(model: str | Path | bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # quantized files warn about optimisations they skip; the check speaks for them
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def probabilities(model: str | Path | bytes, pictures: Sequence[np.ndarray]) -> np.ndarray:
    """Probabilities of each picture (one run each: pictures differ in size)."""
    s = inference(model)
    return np.concatenate([s.run([OUTPUT], {INPUT: x})[0] for x in pictures])


def seconds_per_picture(model: str | Path | bytes, pictures: Sequence[np.ndarray], repeats: int = 3) -> float:
    """Median over `repeats` passes of the mean time per picture, after one warm-up pass."""
    s = inference(model)
    for x in pictures[:2]:
        s.run([OUTPUT], {INPUT: x})
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for x in pictures:
            s.run([OUTPUT], {INPUT: x})
        passes.append((time.perf_counter() - start) / len(pictures))
    return float(np.median(passes))


# ---------------------------------------------------------------- int8


class _Calibration:
    """onnxruntime's CalibrationDataReader over normalised network inputs."""

    def __init__(self, batches: Sequence[np.ndarray]):
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {NETWORK_INPUT: x}


def quantize_network(network: Path, dest: Path, calibration: Sequence[np.ndarray]) -> None:
    """Static int8 quantization (QDQ, per-channel weights) of the float network, calibrated on `calibration`
    batches of normalised training pictures; the shape-inference pre-pass is what onnxruntime recommends."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dest.with_name("prepared.onnx")
    quant_pre_process(str(network), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(dest), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    prepared.unlink(missing_ok=True)
