"""Times the yolo26n forward pass at 1x3x640x640 fp32 in PyTorch, ONNX Runtime and OpenVINO
(fp32 and its default precision), each at the same thread count, and prints JSON medians.

Used by bench/forward.sh, which runs ferroyolo side by side. Needs a Python environment with
ultralytics==8.4.190, onnxruntime and openvino (see bench/README.md).
"""
import json
import os
import statistics
import shutil
import sys
import tempfile
import time


def median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    weights, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    import numpy as np
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(threads)
    x = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    results = {}

    yolo = YOLO(weights)
    model = yolo.model.float().eval().fuse()
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        results["pytorch"] = median_ms(lambda: model(xt), 3, runs)

    onnx_dir = tempfile.mkdtemp()
    # Exported from a copy: the exporter writes the .onnx beside the weights it reads.
    copy = os.path.join(onnx_dir, os.path.basename(weights))
    shutil.copyfile(weights, copy)
    onnx_path = YOLO(copy).export(format="onnx", imgsz=640, nms=False, simplify=False, project=onnx_dir, verbose=False)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    results["onnxruntime"] = median_ms(lambda: sess.run(None, {name: x}), 3, runs)

    import openvino as ov

    core = ov.Core()
    ov_model = core.read_model(onnx_path)
    for label, cfg in [("openvino_fp32", {"INFERENCE_PRECISION_HINT": "f32"}), ("openvino_default", {})]:
        cfg = dict(cfg, INFERENCE_NUM_THREADS=threads, NUM_STREAMS=1, PERFORMANCE_HINT="LATENCY")
        compiled = core.compile_model(ov_model, "CPU", cfg)
        req = compiled.create_infer_request()
        results[label] = median_ms(lambda: req.infer({0: x}), 3, runs)
        if label == "openvino_default":
            results["openvino_default_precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
