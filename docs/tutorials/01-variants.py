# %% [markdown]
# # Generate and inspect a variant, and make your own
#
# This tutorial renders an8Flower samples, looks at what decides their class, writes a dataset
# folder and checks it, then builds a variant of its own: three classes decided by the colour of
# the centre, with every nuisance kept.
#
# It runs as a script (`python 01-variants.py`) or, through Jupytext, as a notebook. With
# `AN8FLOWER_TUTORIAL_TINY=1` (what the tests set) it works at a toy size.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import an8flower

TINY = os.environ.get("AN8FLOWER_TUTORIAL_TINY") == "1"
SIZE = 64 if TINY else 224  # image side in pixels (64..512)
PER_CLASS = 10 if TINY else 100  # samples per class over the three splits (70/10/20%)

# %% [markdown]
# ## A built-in variant
#
# A variant is a frozen `VariantSpec`. In `double-12c` the class is the pair (centre colour, leaf
# colour); every other part draws its colour from a palette that holds the class colours too.

# %%
spec = an8flower.load_spec("double-12c")
print(spec.name, "-", spec.description)
print("parts:", spec.parts)
print("discriminative:", spec.discriminative)
for label, name in enumerate(spec.classes[:4]):
    print(label, name, dict(zip(spec.discriminative, spec.class_colours[label], strict=True)))

# %% [markdown]
# Rendering is a pure function of (spec, seed, index): sample `i` has class `i mod K`, and the
# same arguments give the same bytes on any machine, in any process.

# %%
sample = an8flower.render_sample(spec, seed=0, index=7, size=SIZE)
again = an8flower.render_sample(spec, seed=0, index=7, size=SIZE)
assert np.array_equal(sample.image, again.image)
print(sample.label, spec.classes[sample.label], sample.image.shape, sample.image.dtype)
print("mask covers", round(float(sample.mask.mean()), 4), "of the image")

# %% [markdown]
# Each sample carries its image (uint8 H x W x 3), the mask of the visible discriminative parts
# (bool H x W), the part map (one id per part, the position in `spec.parts`) and the parameters
# drawn for it.

# %%
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
axes[0].imshow(sample.image)
axes[0].set_title(spec.classes[sample.label])
axes[1].imshow(sample.mask, cmap="gray")
axes[1].set_title("mask")
axes[2].imshow(sample.parts, cmap="tab10", vmin=0, vmax=9)
axes[2].set_title("parts")
for ax in axes:
    ax.axis("off")
fig.savefig("sample.png", bbox_inches="tight")
print(sorted(sample.meta)[:6])

# %% [markdown]
# ## A dataset folder
#
# `generate` writes the images, masks and part maps as PNG files with a manifest of SHA-256
# hashes, `dataset.json` and a data card; `verify_dataset` recomputes everything `generate` would
# write and compares. (From a shell: `an8flower generate double-12c --out data/d12 --size 64
# --per-class 10`, then `an8flower verify data/d12`.)

# %%
from an8flower.generate import generate
from an8flower.verify import verify_dataset

result = generate(
    spec, "data/d12", size=SIZE, per_class=PER_CLASS, seed=0, workers=1, progress=False
)
report = verify_dataset("data/d12", progress=False)
print(report.checked, "files checked,", report.rendered, "samples rendered again")
assert not (report.inconsistent or report.missing or report.changed or report.extra)

# %% [markdown]
# The folder reads back as a torch `Dataset` of `(image, label, mask)`, the same samples that
# `An8FlowerOnTheFly` renders without a folder:

# %%
folder = an8flower.An8Flower("data/d12", split="test")
on_the_fly = an8flower.An8FlowerOnTheFly("double-12c", split="test", size=SIZE, per_class=PER_CLASS)
image, label, mask = folder[0]
image2, label2, mask2 = on_the_fly[0]
print(len(folder), image.shape, label, int(mask.sum()))
assert (
    label == label2 and bool((mask == mask2).all()) and float((image - image2).abs().max()) == 0.0
)

# %% [markdown]
# ## A variant of your own
#
# A spec is data: start from a built-in one's dictionary, change the class rule, and build a new
# spec. Here: `single-6c` cut to three classes (a red, a green and a blue centre). Every other
# rule still holds and is checked when the spec is built: the nuisance palettes must contain
# every class colour, class colours must stay apart after jitter and lighting, and names must be
# safe as folder names. (A spec can also be a TOML or JSON file: see
# [The dataset](../dataset.md#your-own-variant-the-spec-format).)

# %%
data = an8flower.load_spec("single-6c").to_dict()
keep = ["centre-red", "centre-green", "centre-blue"]
data["name"] = "single-3c"
data["description"] = "3 classes decided by the colour of the flower centre (red, green, blue)."
data["classes"] = keep
data["class_colours"] = {name: data["class_colours"][name] for name in keep}
mine = an8flower.VariantSpec.from_dict(data)
print(mine.name, mine.num_classes, mine.classes, mine.sha256()[:16])

# %% [markdown]
# A broken rule is refused with the field it breaks, before anything is drawn:

# %%
from an8flower.errors import SpecError

bad = dict(data, classes=["centre-red", "centre-red", "centre-blue"])
try:
    an8flower.VariantSpec.from_dict(bad)
except SpecError as exc:
    print("refused:", exc)

# %% [markdown]
# The new variant renders, generates and verifies like a built-in one. Save it as a file to use it
# from the command line (`an8flower generate single-3c.json --out data/s3`).

# %%
with open("single-3c.json", "w", encoding="utf-8") as fh:
    fh.write(mine.to_json())
assert an8flower.load_spec("single-3c.json") == mine
generate(
    "single-3c.json", "data/s3", size=SIZE, per_class=PER_CLASS, seed=0, workers=1, progress=False
)
report = verify_dataset("data/s3", progress=False)
assert not (report.inconsistent or report.missing or report.changed or report.extra)
counts = np.bincount([label for _, label, _ in an8flower.An8Flower("data/s3", split="train")])
print("train images per class:", counts)

# %% [markdown]
# Next: [score your own model on your own images](02-your-own-images.md).
