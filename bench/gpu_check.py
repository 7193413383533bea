"""The GPU path, checked on a machine with a CUDA GPU (one prepared script, a few minutes).

    .venv/bin/python bench/gpu_check.py [--out bench/gpu.json]

1. trains a small model on CUDA and on the CPU with the same seed and data, and compares the results;
2. trains with AMP and channels_last, and checks the loss stays finite and close to fp32;
3. measures images/s of full fine-tuning of ResNet50 at fp32 and with AMP (target: AMP >= 2x fp32).
Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vislab.data import folders as data, synthetic  # noqa: E402
from vislab.training import experiment
from vislab.models import factory as models
from vislab.training.loop import TrainConfig  # noqa: E402


def same_run_on(device: str, folder: Path, amp: bool) -> experiment.Result:
    spec = experiment.Spec(model="test_resnet", strategy="partial", weights="auto", img_size=64,
                           train=TrainConfig(epochs=2, batch_size=8, device=device, seed=0, amp=amp))
    return experiment.train(spec, data.scan_folder(folder), None)


def images_per_second(amp: bool, batch: int = 64, steps: int = 20, size: int = 224) -> float:
    model, _ = models.create_model("resnet50", 10, weights_choice="random")
    model = model.cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported())
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    x = torch.randn(batch, 3, size, size, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device="cuda")
    for i in range(steps + 5):
        if i == 5:  # warm-up done (cuDNN autotuning, allocator)
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: nothing to check (exit 0)")
        return 0
    torch.backends.cudnn.benchmark = True
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "bf16": torch.cuda.is_bf16_supported()}
    folder = synthetic.make_synthetic(Path(tempfile.mkdtemp()) / "syn", classes=3, per_class=12, size=64)
    cpu = same_run_on("cpu", folder, amp=False)
    gpu = same_run_on("cuda", folder, amp=False)
    diffs = [abs(a["train_loss"] - b["train_loss"]) for a, b in zip(cpu.history.epochs, gpu.history.epochs)]
    report["cpu_vs_cuda_max_train_loss_diff"] = max(diffs)
    report["cpu_vs_cuda_ok"] = max(diffs) < 1e-3
    amp = same_run_on("cuda", folder, amp=True)
    report["amp_losses_finite"] = all(torch.isfinite(torch.tensor(m["train_loss"])) for m in amp.history.epochs)
    report["amp_vs_fp32_max_train_loss_diff"] = max(
        abs(a["train_loss"] - b["train_loss"]) for a, b in zip(gpu.history.epochs, amp.history.epochs))
    report["cache"] = gpu.history.cache
    fp32 = images_per_second(amp=False)
    mixed = images_per_second(amp=True)
    report.update(resnet50_fp32_img_s=fp32, resnet50_amp_img_s=mixed, amp_speedup=mixed / fp32,
                  amp_target_met=mixed / fp32 >= 2.0)
    print(json.dumps(report, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    ok = report["cpu_vs_cuda_ok"] and report["amp_losses_finite"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
