"""Check that `.pt` files written by ferroyolo load in Ultralytics and predict like the originals.

Not part of the build or the tests: a manual oracle check. Usage (any Python with ultralytics):

    FERROYOLO_PT_WRITE_OUT=/tmp/ptw cargo test --release -p ferroyolo --test checkpoint_write resaved
    python tools/check_ultralytics_load.py /tmp/ptw ../shared/fixtures

For each `<model>-release.pt` / `<model>-last.pt` in the folder it loads the file with
`ultralytics.YOLO` (in a fresh process, once plainly and once with ULTRALYTICS_SAFE_LOAD=1),
predicts on the fixture images (NMS and NMS-free heads) and compares every box, score and class
with those of `fixtures/weights/<model>.pt`; it also compares `info()` and runs `val` on coco8.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

WORKER = r"""
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from ultralytics import YOLO
path, images, data = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
raw = torch.load(path, map_location="cpu", weights_only=False)
model = YOLO(path)
out = {"keys": list(raw.keys()), "optimizer_type": type(raw.get("optimizer")).__name__}
info = model.info(detailed=False, verbose=True)  # (layers, parameters, gradients, GFLOPs)
out["info"] = [info[0], info[1], round(info[3], 3)] if info else [
    len(list(model.model.modules())), sum(p.numel() for p in model.model.parameters())]
for nms in (True, False):
    preds = []
    for r in model.predict(images, imgsz=640, conf=0.25, nms=nms, verbose=False, save=False):
        b = r.boxes
        preds.append({"xyxy": b.xyxy.tolist(), "conf": b.conf.tolist(), "cls": b.cls.tolist()})
    out["nms" if nms else "e2e"] = preds
# Raw head outputs for a fixed random input (scores of random models stay under any threshold).
torch.manual_seed(0)
x = torch.rand(1, 3, 640, 640)
with torch.no_grad():
    y = model.model.float().eval()(x)
y = y[0] if isinstance(y, (list, tuple)) else y
y = y["one2many"] if isinstance(y, dict) else y
import numpy as np
np.save(sys.argv[4], (y[0] if isinstance(y, (list, tuple)) else y).numpy())
m = model.val(data=data, imgsz=640, batch=4, plots=False, verbose=False, workers=0)
out["map50_95"] = float(m.box.map)
print("RESULT" + json.dumps(out))
"""


def run(path, images, data, safe):
    env = dict(os.environ)
    env["ULTRALYTICS_SAFE_LOAD"] = "1" if safe else "0"
    raw = tempfile.mktemp(suffix=".npy")
    p = subprocess.run([sys.executable, "-c", WORKER, str(path), json.dumps(images), data, raw],
                       env=env, capture_output=True, text=True, cwd="/tmp")
    line = [l for l in p.stdout.splitlines() if l.startswith("RESULT")]
    if p.returncode != 0 or not line:
        return {"error": (p.stderr or p.stdout)[-2000:]}
    out = json.loads(line[-1][len("RESULT"):])
    out["raw"] = np.load(raw)
    os.remove(raw)
    return out


def max_diff(a, b):
    """Largest difference between two prediction lists (inf when the counts differ)."""
    worst = {"box": 0.0, "conf": 0.0, "cls": 0.0}
    for x, y in zip(a, b):
        if len(x["conf"]) != len(y["conf"]):
            return {"count": (len(x["conf"]), len(y["conf"]))}
        for bx, by in zip(x["xyxy"], y["xyxy"]):
            worst["box"] = max(worst["box"], *(abs(p - q) for p, q in zip(bx, by)))
        worst["conf"] = max([worst["conf"]] + [abs(p - q) for p, q in zip(x["conf"], y["conf"])])
        worst["cls"] = max([worst["cls"]] + [abs(p - q) for p, q in zip(x["cls"], y["cls"])])
    return worst


def main():
    out_dir, fixtures = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
    images = [str(fixtures / "images/bus.jpg")] + sorted(str(p) for p in (fixtures / "images-extra").iterdir())
    # The dataset yaml with an absolute root (Ultralytics resolves a relative one against the cwd).
    import yaml
    cfg = yaml.safe_load((fixtures / "coco8/data.yaml").read_text())
    cfg["path"] = str(fixtures / "coco8")
    data = str(Path(tempfile.mkdtemp()) / "coco8.yaml")
    Path(data).write_text(yaml.safe_dump(cfg))
    for model in ("yolo26n-coco", "yolo26n-rand-nc3", "yolo26s-rand"):
        ref = run(fixtures / f"weights/{model}.pt", images, data, safe=False)
        if "error" in ref:
            print(model, "original failed:", ref["error"])
            continue
        n_det = sum(len(p["conf"]) for p in ref["nms"])
        print(f"{model}: original info {ref['info']}, {n_det} detections (NMS) on {len(images)} images, "
              f"coco8 mAP50-95 {ref['map50_95']:.4f}")
        for variant in ("release", "last"):
            path = out_dir / f"{model}-{variant}.pt"
            for safe in (False, True):
                got = run(path, images, data, safe)
                tag = f"  {variant:7s} safe_load={int(safe)}"
                if "error" in got:
                    print(tag, "FAILED:", got["error"])
                    continue
                print(tag, f"info {got['info']} (same: {got['info'] == ref['info']}),",
                      f"nms diff {max_diff(got['nms'], ref['nms'])},",
                      f"e2e diff {max_diff(got['e2e'], ref['e2e'])},",
                      f"raw output max|diff| {float(np.abs(got['raw'] - ref['raw']).max()):.3g}",
                      f"mAP50-95 {got['map50_95']:.4f}, optimizer {got['optimizer_type']}, keys {got['keys']}")


if __name__ == "__main__":
    main()
