"""Baseline side of the INT8 benchmark: ONNX Runtime's own static INT8 quantization of yolo26n,
timed at 1x3x640x640 next to ONNX Runtime fp32 and OpenVINO (fp32, its default precision, and
the same INT8 model), each at the same thread count. Prints one JSON line per engine.

    python bench/reference_int8.py WEIGHTS THREADS RUNS [--data coco8/data.yaml] [--map]

The ONNX export is the one bench/reference_forward.py times. The INT8 model is
`onnxruntime.quantization.quantize_static` in QDQ format: weights int8 per output channel,
activations uint8 (ONNX Runtime's recommended U8S8 on x86), min-max ranges calibrated on the
dataset's train and val images letterboxed to 640x640 as the reference validates them.
`--ops` chooses what is quantized: `body` (default) every op ONNX Runtime supports except the
Detect layer's box/score decoding, which stays in float as in ferroyolo's INT8; `conv` only Conv
and MatMul (each activation goes back to float between convolutions); `all` everything ONNX
Runtime supports (the decoding too, which ruins the boxes).
`--map` also scores the fp32 and INT8 ONNX models on the dataset's val split with the
Ultralytics validator (imgsz 640), so the accuracy cost is measured the same way for both.

Used by bench/int8.sh. Needs ultralytics==8.4.190, onnxruntime, openvino and onnx (see
bench/README.md).
"""
import argparse
import glob
import json
import os
import shutil
import tempfile
import time

# Same timing as the fp32 forward benchmark (this folder is on sys.path when run as a script).
from reference_forward import median_ms


def dataset_images(data_yaml):
    """Image paths of the dataset's train and val splits (folders of images, as coco8 has)."""
    import yaml

    with open(data_yaml) as f:
        cfg = yaml.safe_load(f)
    root = cfg.get("path", ".")
    if not os.path.isabs(root):
        root = os.path.join(os.path.dirname(os.path.abspath(data_yaml)), root)
    paths = []
    for split in ("train", "val"):
        folder = os.path.join(root, cfg[split])
        for ext in ("jpg", "jpeg", "png", "bmp", "webp"):
            paths += glob.glob(os.path.join(folder, f"*.{ext}"))
    if not paths:
        raise SystemExit(f"{data_yaml}: no train/val images found under {root}")
    return sorted(paths), cfg, root


def letterboxed(path, size):
    """The reference's square letterbox (centred, pad 114, bilinear), RGB, /255, 1x3xHxW."""
    import cv2
    import numpy as np
    from ultralytics.data.augment import LetterBox

    img = cv2.imread(path)
    if img is None:
        raise SystemExit(f"{path}: cannot read image")
    img = LetterBox(new_shape=(size, size), auto=False)(image=img)
    x = img[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0
    return np.ascontiguousarray(x[None])


def decode_nodes(model):
    """Nodes of the last layer (Detect) outside its convolution branches: the box and score
    decoding and the top-k of the end-to-end head (the exporter names nodes /model.N/...)."""
    layer = lambda n: int(n.name.split("/")[1].split(".")[1]) if n.name.startswith("/model.") else -1
    last = max(layer(n) for n in model.graph.node)
    return [n.name for n in model.graph.node if layer(n) == last and "cv" not in n.name]


def quantize(fp32_path, int8_path, images, ops):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, name):
            self.batches = iter([{name: letterboxed(p, 640)} for p in images])

        def get_next(self):
            return next(self.batches, None)

    prepared = fp32_path.replace(".onnx", "-prep.onnx")
    # Shape inference and graph cleanup, as ONNX Runtime advises (its symbolic shape inference
    # does not follow the end-to-end head's TopK/gather ops: ONNX's own inference is enough).
    quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
    prepared_model = onnx.load(prepared)
    input_name = prepared_model.graph.input[0].name
    quantize_static(
        prepared,
        int8_path,
        Reader(input_name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=["Conv", "MatMul"] if ops == "conv" else None,
        nodes_to_exclude=decode_nodes(prepared_model) if ops == "body" else None,
    )
    # The Ultralytics metadata (names, stride, imgsz...) lets its validator load the INT8 model.
    src, dst = onnx.load(fp32_path), onnx.load(int8_path)
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
    onnx.save(dst, int8_path)


def coco_map(onnx_path, cfg, root, workdir):
    """mAP50-95 of an ONNX model on the val split, by the Ultralytics validator at 640."""
    import yaml
    from ultralytics import YOLO

    # A copy of the dataset: the validator writes label caches beside the labels, and resolves
    # a relative `path` against its own datasets folder.
    copy = os.path.join(workdir, "dataset")
    if not os.path.isdir(copy):
        shutil.copytree(root, copy)
    pinned = os.path.join(workdir, "data.yaml")
    with open(pinned, "w") as f:
        yaml.safe_dump(dict(cfg, path=copy), f)
    metrics = YOLO(onnx_path, task="detect").val(data=pinned, imgsz=640, batch=1, device="cpu", plots=False, verbose=False, project=workdir, name="val")
    return float(metrics.box.map)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("threads", type=int)
    ap.add_argument("runs", type=int)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "fixtures", "coco8", "data.yaml"))
    ap.add_argument("--map", action="store_true", help="also score fp32 and INT8 ONNX mAP50-95 on the val split")
    ap.add_argument("--ops", choices=["body", "conv", "all"], default="body", help="what to quantize (see above)")
    a = ap.parse_args()
    images, cfg, root = dataset_images(a.data)
    workdir = tempfile.mkdtemp()
    try:
        run(a, images, cfg, root, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(a, images, cfg, root, workdir):
    import numpy as np
    import onnxruntime as ort
    import openvino as ov
    from ultralytics import YOLO

    # Exported from a copy: the exporter writes the .onnx beside the weights it reads.
    weights = os.path.join(workdir, os.path.basename(a.weights))
    shutil.copyfile(a.weights, weights)
    fp32_path = YOLO(weights).export(format="onnx", imgsz=640, nms=False, simplify=False, project=workdir, verbose=False)
    int8_path = os.path.join(workdir, "model-int8.onnx")
    t0 = time.perf_counter()
    quantize(fp32_path, int8_path, images, a.ops)
    quant_s = time.perf_counter() - t0
    ops = {"body": "all but decoding", "conv": "Conv,MatMul", "all": "all"}[a.ops]
    common = {"threads": a.threads, "runs": a.runs}

    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    results = []

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    for label, path in [("onnxruntime_fp32", fp32_path), ("onnxruntime_int8", int8_path)]:
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        row = {"engine": label, "median_ms": median_ms(lambda: sess.run(None, {name: x}), 3, a.runs), **common}
        if label.endswith("int8"):
            row.update(calibration_images=len(images), quantized_ops=ops, quantize_s=round(quant_s, 1), file_mb=round(os.path.getsize(path) / 1e6, 2))
        else:
            row["file_mb"] = round(os.path.getsize(path) / 1e6, 2)
        results.append(row)

    core = ov.Core()
    for label, path, hint in [
        ("openvino_fp32", fp32_path, {"INFERENCE_PRECISION_HINT": "f32"}),
        ("openvino_default", fp32_path, {}),
        ("openvino_int8", int8_path, {}),  # OpenVINO runs the QDQ model with its own int8 kernels
    ]:
        cfg_ov = dict(hint, INFERENCE_NUM_THREADS=a.threads, NUM_STREAMS=1, PERFORMANCE_HINT="LATENCY")
        compiled = core.compile_model(core.read_model(path), "CPU", cfg_ov)
        req = compiled.create_infer_request()
        row = {"engine": label, "median_ms": median_ms(lambda: req.infer({0: x}), 3, a.runs), **common}
        if label == "openvino_int8":
            row["precision"] = "ORT int8 QDQ model"
        else:
            precision = compiled.get_property("INFERENCE_PRECISION_HINT")
            row["precision"] = precision.get_type_name() if hasattr(precision, "get_type_name") else str(precision)
        results.append(row)

    if a.map:
        scores = {label: coco_map(path, cfg, root, workdir) for label, path in [("onnxruntime_fp32", fp32_path), ("onnxruntime_int8", int8_path)]}
        for row in results:
            if row["engine"] in scores:
                row["map50_95"] = round(scores[row["engine"]], 4)

    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
