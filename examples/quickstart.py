"""Quickstart: load a pipeline, read its catalogue, edit the text a prompt renders, capture K/V.

Runs anywhere in a few seconds on a tiny random-weight SDXL (no download). With real weights, pass
a hub id or a save_pretrained folder to dp.load instead, and use the paper's settings
(SDXL: sites "cross:55-57", steps=50, t_s=4, guidance 5.0).

    python examples/quickstart.py
"""
import tempfile

import diffprobe as dp
from diffprobe.zoo.tiny import save_tiny

folder = save_tiny("sdxl", tempfile.mkdtemp() + "/tiny-sdxl")
probe = dp.load(folder)
print(probe)
for site in probe.sites.select(kind="cross", block="up"):
    print(f"  {site.label:9s} {site.name:55s} heads={site.heads} kv_params={site.kv_params}")

source, target = 'A sign that says "STOP".', 'A sign that says "OPEN".'
edit = dp.Inject(prompt=target, sites="cross:5-7", steps="1:")
capture = dp.Capture(what="kv", sites="cross:5", steps="1:")
out = probe.generate(source, [edit, capture], steps=4, seed=0)
plain = probe.generate(source, steps=4, seed=0)
print("images:", out.images.shape, out.images.dtype)
print("pixels changed by the edit:", int((out.images[0] != plain.images[0]).any(-1).sum()))
for name, arr in out.captures.items():
    print(f"captured {name}: dims={arr.dims} shape={arr.shape}")
print(dp.load("sdxl-base-1.0:meta").count("cross:55-57"))
