"""Times one YOLO26 training step in PyTorch (the reference): training-mode forward, the end-to-end
loss (`model.loss`, the reference's criterion), backward and an SGD step, and prints JSON with the
median in milliseconds, the first step's loss and the process's peak RSS.

Used by bench/train_step.sh, which runs ferroyolo's `bench_train_step` example side by side.

    python bench/reference_train_step.py WEIGHTS THREADS RUNS [BATCH] [SIZE]

The batch is the fixture training batch (the 4 coco8 images at 320x320, `loss_batch_img.npy` and
`loss_batch_targets.npy`) repeated to BATCH images (default 8); at another SIZE the images are
tiled or cropped to it. The optimizer is `torch.optim.SGD` with the trainer's three groups (decayed weights,
BatchNorm weights, biases), lr 0.01, Nesterov momentum 0.937, weight decay 5e-4.
"""
import json
import os
import resource
import statistics
import sys
import time


def main():
    weights, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    batch = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    size = int(sys.argv[5]) if len(sys.argv) > 5 else 320
    fixtures = os.environ.get("FIXTURES", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures"))

    import numpy as np
    import torch
    from ultralytics import YOLO
    from ultralytics.cfg import get_cfg

    torch.set_num_threads(threads)
    img = np.load(os.path.join(fixtures, "reference", "loss_batch_img.npy"))
    targets = np.load(os.path.join(fixtures, "reference", "loss_batch_targets.npy"))
    base = img.shape[0]
    idx = np.arange(size) % img.shape[-1]  # tiled or cropped to SIZE, as the Rust example does
    x = torch.from_numpy(np.ascontiguousarray(np.stack([img[i % base] for i in range(batch)])[:, :, idx][:, :, :, idx]))
    rows = []
    for i in range(batch):
        for r in targets[targets[:, 0] == i % base]:
            rows.append([i, *r[1:]])
    t = torch.tensor(np.array(rows, dtype=np.float32))
    data = {"img": x, "batch_idx": t[:, 0], "cls": t[:, 1:2], "bboxes": t[:, 2:6]}

    model = YOLO(weights).model.float()
    model.args = get_cfg()
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    decay, bn, bias = [], [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if "bias" in name:
                bias.append(p)
            elif isinstance(module, torch.nn.BatchNorm2d):
                bn.append(p)
            else:
                decay.append(p)
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": 5e-4},
            {"params": bn, "weight_decay": 0.0},
            {"params": bias, "weight_decay": 0.0},
        ],
        lr=0.01,
        momentum=0.937,
        nesterov=True,
    )

    def step():
        opt.zero_grad(set_to_none=True)
        loss, _ = model.loss(data)
        loss.sum().backward()
        opt.step()
        return float(loss.detach().sum())

    warmup = 2
    times, cpu, losses = [], [], []
    for i in range(warmup + runs):
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(step())
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "pytorch": round(statistics.median(times), 3),
                "min": round(min(times), 3),
                "max": round(max(times), 3),
                "cpu_ms": round(statistics.median(cpu), 3),
                "runs": runs,
                "threads": threads,
                "batch": batch,
                "size": size,
                "first_loss": losses[0],
                "peak_rss_mib": round(peak_mib, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
