"""Seconds to open a confusion-matrix cell of 6 images (Grad-CAM for the predicted and the true class, one
forward + backward over 12 maps): MobileNetV2 with its seeded weights at 224 px, on this CPU.

    .venv/bin/python bench/error_cell.py
"""
import tempfile
import time

import torch
from vislab.data.synthetic import make_synthetic
from vislab.models.factory import create_model
from vislab.views import cam, errors

root = make_synthetic(tempfile.mkdtemp(), classes=3, per_class=2, size=256)
paths = sorted(str(p) for p in root.rglob("*.png"))[:6]
model, info = create_model("mobilenet_v2", num_classes=3, img_size=224)
model.eval()
layer = cam.default_layer(model, "mobilenet_v2")
print("threads", torch.get_num_threads(), "layer", layer, "size", info.data_config.input_size)
for rep in range(3):
    t = time.perf_counter()
    errors.explain_pairs(model, info.data_config, paths, [0, 1, 2, 0, 1, 2], [1, 2, 0, 2, 0, 1], layer)
    print(f"run {rep}: {time.perf_counter() - t:.2f} s for 6 images x 2 classes")
