# %% [markdown]
# # Score your own model on your own images with masks
#
# The leaderboard is not tied to an8Flower: any classifier, and any images with a mask of what
# the classifier must look at, can be scored by every explainer and metric of the package. This
# tutorial
#
# 1. writes a small image set with masks as PNG files (standing in for yours),
# 2. reads it into a `TensorSplit` and wraps it in a `PreparedData`,
# 3. trains a small model of its own on it,
# 4. scores explainers on it with `run_leaderboard`, and with the metric functions directly.
#
# With `AN8FLOWER_TUTORIAL_TINY=1` (what the tests set) it works at a toy size.

# %%
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

TINY = os.environ.get("AN8FLOWER_TUTORIAL_TINY") == "1"
N = 60 if TINY else 600  # images
SIZE = 32  # image side
STEPS = 150 if TINY else 600  # training steps
torch.manual_seed(0)

# %% [markdown]
# ## 1. Images and masks on disk
#
# The task: a coloured square on a noisy grey background, its colour is the class (red, green or
# blue); a grey square elsewhere is a distractor. The mask is the coloured square: the only
# pixels that tell the class. Your own data would be files like these: an image and a same-sized
# mask (white = the evidence) per sample, and a label.

# %%
CLASSES = ["red", "green", "blue"]
COLOURS = np.array([[220, 30, 30], [30, 190, 30], [30, 60, 220]], dtype=np.uint8)
rng = np.random.default_rng(0)
root = Path("my-images")
(root / "images").mkdir(parents=True, exist_ok=True)
(root / "masks").mkdir(exist_ok=True)
written = []
for i in range(N):
    label = i % 3
    image = rng.integers(90, 150, (SIZE, SIZE, 3)).astype(np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    y, x = rng.integers(0, SIZE - 8, 2)
    image[y : y + 8, x : x + 8] = COLOURS[label]
    mask[y : y + 8, x : x + 8] = True
    gy, gx = rng.integers(0, SIZE - 6, 2)
    distractor = ~mask[gy : gy + 6, gx : gx + 6]
    image[gy : gy + 6, gx : gx + 6][distractor] = 128
    Image.fromarray(image).save(root / "images" / f"{i:04d}.png")
    Image.fromarray(mask).save(root / "masks" / f"{i:04d}.png")
    written.append(label)
(root / "labels.txt").write_text("\n".join(map(str, written)) + "\n")
print(len(list((root / "images").iterdir())), "images written")

# %% [markdown]
# ## 2. Read them into a `TensorSplit` and a `PreparedData`
#
# A `TensorSplit` holds a split in memory: uint8 images (N, 3, H, W), labels, bool masks and,
# optionally, part maps (here: 1 on the square, so that the part-attribution metric knows it). A
# `PreparedData` says what the report needs to know about the data: its name, its class names,
# its parts and which of them are discriminative, and a hash that identifies the images (the
# cache keys the results by it).

# %%
from an8flower.eval.data import PreparedData, TensorSplit

names = sorted(p.name for p in (root / "images").iterdir())
labels = torch.tensor([int(line) for line in (root / "labels.txt").read_text().split()])
images = torch.from_numpy(
    np.stack([np.asarray(Image.open(root / "images" / n).convert("RGB")) for n in names])
)
masks = torch.from_numpy(
    np.stack([np.asarray(Image.open(root / "masks" / n)) for n in names])
).bool()
images = images.permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8

n_train = N * 2 // 3
train = TensorSplit(
    images[:n_train],
    labels[:n_train],
    masks[:n_train],
    masks[:n_train].to(torch.uint8),
    ids=range(n_train),
)
test = TensorSplit(
    images[n_train:],
    labels[n_train:],
    masks[n_train:],
    masks[n_train:].to(torch.uint8),
    ids=range(n_train, N),
)
data = PreparedData(
    dataset="squares",
    variant="v1",
    source=str(root),
    hash=test.sha256(),
    classes=CLASSES,
    parts=["background", "square"],
    discriminative=["square"],
    train=None,
    val=None,
    test=test,
    size=SIZE,
)
print(len(train), "training images,", len(test), "test images")

# %% [markdown]
# ## 3. Your model
#
# Any `nn.Module` that maps float images (B, 3, H, W) in [0, 1] to logits (B, K) will do. (A
# model that returns a tuple or a dict is wrapped once with
# `an8flower.baselines.SelectOutput(model, key)`.) This one is small enough to train here.

# %%
model = nn.Sequential(
    nn.Conv2d(3, 16, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(16, 16, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(16, 3, 1),
    nn.AdaptiveMaxPool2d(1),
    nn.Flatten(),
)
optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
x_train, y_train = train.float_images(slice(None)), train.labels
for _ in range(STEPS):
    batch = torch.randint(0, len(train), (32,))
    loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
model.eval()
with torch.no_grad():
    accuracy = (
        (model(test.float_images(slice(None))).argmax(1) == test.labels).float().mean().item()
    )
print(f"test accuracy {accuracy:.1%}")

# %% [markdown]
# ## 4. Score explainers on it
#
# `run_leaderboard(config, datasets=[...], models={...})` skips the rendering and the training:
# it explains the correctly classified test images with each explainer and scores the heatmaps
# against the masks. `oracle` (the mask as heatmap) is the ceiling; `random` and `centre` are
# chance.

# %%
from an8flower.eval import RunConfig, run_leaderboard

config = RunConfig(
    out="my-board",
    explainers=["oracle", "gradient", "input_x_gradient", "occlusion", "random", "centre"],
    metrics=["iou_auc", "pointing_game", "energy_pointing_game", "pixel_auc", "part_attribution"],
    explainer_options={"occlusion": {"window": 8, "stride": 4}},
    batch_size=16,
    plots=False,
)
summary = run_leaderboard(config, datasets=[data], models={"my-cnn": model}, progress=False)
print(summary.markdown.split("## ")[-1])

# %% [markdown]
# Every cell is also a row of `my-board/results.csv`, and `summary.cells` holds them with their
# per-image scores. The oracle scores 1 on the mask metrics; a useful explainer lies well above
# `random` and `centre`. Read the columns together: this model ends in a global max-pool, so the
# gradient flows back through one winning position per channel, and its map is a few pixels on
# the square: it points at the evidence (pointing, energy pointing game) but covers little of it
# (pixel AUC), where occlusion's blocks cover the square and its surroundings.

# %%
cells = {(c["explainer"], c["metric"]): c["value"] for c in summary.cells}
for explainer in ("oracle", "gradient", "occlusion", "random", "centre"):
    print(
        f"{explainer:18s} pointing {cells[explainer, 'pointing_game']:.3f}   "
        f"pixel AUC {cells[explainer, 'pixel_auc']:.3f}"
    )
assert cells["oracle", "pointing_game"] == 1.0
assert cells["gradient", "pixel_auc"] > cells["random", "pixel_auc"]

# %% [markdown]
# ## Without the board: the metric functions
#
# The metrics are plain batched functions of (heatmaps, masks), so the same scores can be had
# directly, for any heatmaps:

# %%
from an8flower.baselines import build_explainer
from an8flower.eval.metrics import energy_pointing_game, pointing_game

correct = (model(test.float_images(slice(None))).argmax(1) == test.labels).nonzero().flatten()
x, y, m = test.float_images(correct), test.labels[correct], test.masks[correct]
heatmaps = build_explainer("gradient")(model, x, y)
print("pointing game", pointing_game(heatmaps, m).mean().item())
print("energy pointing game", energy_pointing_game(heatmaps, m).mean().item())

# %% [markdown]
# Next: [put your own explainer on a board](03-your-own-explainer.md).
