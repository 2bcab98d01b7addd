# %% [markdown]
# # Put your own explainer on a board and read the result
#
# An explainer is a class with one method, `explain(model, images, targets) -> heatmaps`.
# Registered by name, it is listed by `an8flower explainers`, built by the leaderboard, cached
# like the built-ins (keyed by its options and its source file, so an edit recomputes it) and
# ranked beside them. This tutorial writes one, puts it on an an8Flower board with a trained
# small CNN, and reads what the board says about it.
#
# With `AN8FLOWER_TUTORIAL_TINY=1` (what the tests set) it works at a toy size: a model trained for
# a few epochs on a few images, whose numbers mean little.

# %%
import json
import os

import torch

TINY = os.environ.get("AN8FLOWER_TUTORIAL_TINY") == "1"
SIZE = 64 if TINY else 112
PER_CLASS = 30 if TINY else 300
MAX_IMAGES = 12 if TINY else 100
EPOCHS = 3 if TINY else 30

# %% [markdown]
# ## The explainer
#
# A deliberately naive idea: a flower's class is decided by colour, so explain by **colour
# saturation**, the spread between an image's strongest and weakest channel, and ignore the model
# altogether. A baseline like this is worth having on a board: an explainer that does not beat it
# is not explaining the model.
#
# The heatmap must be (B, H, W) float, at the input's resolution, larger = more relevant, on the
# images' device. Options are constructor keywords with defaults; they become part of the cache
# key and can be set per row (`"saturation[blur=3]"`).

# %%
from an8flower.baselines import Explainer, build_explainer, list_explainers, register_explainer


@register_explainer("saturation")
class Saturation(Explainer):
    """Colour saturation, max_c x_c - min_c x_c, optionally box-blurred: a model-free baseline."""

    def __init__(self, blur: int = 1) -> None:
        self.blur = blur

    def explain(self, model, images, targets):
        saturation = images.amax(1) - images.amin(1)
        if self.blur > 1:
            saturation = torch.nn.functional.avg_pool2d(
                saturation[:, None],
                self.blur,
                stride=1,
                padding=self.blur // 2,
                count_include_pad=False,
            )[:, 0]
        return saturation


print("saturation" in list_explainers())
any_model = torch.nn.Sequential(
    torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 12)
)  # logits (B, 12)
images = torch.rand(2, 3, SIZE, SIZE)
heatmaps = build_explainer("saturation", blur=3)(any_model, images, torch.tensor([0, 1]))
print(heatmaps.shape, heatmaps.dtype)

# %% [markdown]
# ## The board
#
# `RunConfig` describes the run; `run_leaderboard` renders the variant, trains the small CNN
# (or reuses it from `my-board/models`), explains the correctly classified test images with
# every explainer and scores each heatmap. Beside ours: `gradient` and `gradcam`, the reference
# rows (`oracle`, the mask itself; `random`; `centre`, a centred Gaussian) and a blurred variant
# of ours as its own row. From a shell the same board is
# `an8flower leaderboard --variant double-12c --import my_method.py --explainer saturation ...`.

# %%
from an8flower.eval import RunConfig, run_leaderboard

config = RunConfig(
    out="my-board",
    variants=["double-12c"],
    size=SIZE,
    per_class=PER_CLASS,
    max_images=MAX_IMAGES,
    model_metric_images=min(MAX_IMAGES, 16),
    explainers=[
        "oracle",
        "saturation",
        "saturation[blur=5]",
        "gradient",
        "gradcam",
        "random",
        "centre",
    ],
    metrics=[
        "iou_auc",
        "pointing_game",
        "energy_pointing_game",
        "pixel_auc",
        "reliance_rank_correlation",
    ],
    train={"epochs": EPOCHS},
    plots=False,
)
summary = run_leaderboard(config, progress=False)
# leaderboard.md opens with the summary ranking; print the first full table after it
sections = summary.markdown.split("\n## ")
print(next(s for s in sections[1:] if not s.startswith("Summary")))

# %% [markdown]
# ## Reading it
#
# * **First, the model.** The line under the title gives the test accuracy. Below 90% the board
#   warns: explanations of a model that has not learned the task mean little. (The tiny run's
#   model is such a case; the full-size run's is not.)
# * **Then, the references.** `oracle` is the ceiling of every mask metric. `random` and
#   `centre` are chance: a row at or below them on a column does not localise better than noise
#   or a prior on where flowers are.
# * **Then, the flags.** The meta-evaluation under the table says, per column, whether it can
#   rank explainers on these images at all: the oracle-to-random range against its standard
#   error, the agreement (Kendall's tau) of the rankings on resampled images, the share of
#   explainer pairs whose order is significant. A flagged column's order means nothing.
# * **Then, the model.** `reliance corr.` compares the explainer's attribution per part with the
#   model's measured reliance on each part (re-rendering the part changed, every other pixel
#   identical). A model-free explainer like ours cannot follow the model.
#
# The same numbers are in `leaderboard.json`:

# %%
with open("my-board/leaderboard.json", encoding="utf-8") as fh:
    board = json.load(fh)
table = board["tables"][0]
print("accuracy:", table["meta"].get("accuracy"))
scores = {row["explainer"]: row["scores"] for row in table["rows"]}
for metric, facts in table["metaeval"]["metrics"].items():
    verdict = f"flagged ({facts['flag']}: {facts['reason']})" if facts["flag"] else "ranks"
    print(f"{metric:28s} {verdict}")

# %% [markdown]
# Where does our baseline stand against the model-based explainers and chance, column by column?


# %%
def place(name: str, metric: str) -> str:
    ranked = sorted(
        (row for row in scores if row != "oracle" and metric in scores[row]),
        key=lambda row: -scores[row][metric]["mean"],
    )
    return f"{ranked.index(name) + 1} of {len(ranked)}"


for metric in ("iou_auc", "energy_pointing_game", "pixel_auc", "reliance_rank_correlation"):
    ours = scores["saturation"][metric]["mean"]
    print(
        f"{metric:28s} saturation {ours:.3f} (rank {place('saturation', metric)}), "
        f"gradient {scores['gradient'][metric]['mean']:.3f}, "
        f"random {scores['random'][metric]['mean']:.3f}"
    )

# %% [markdown]
# Read these numbers with the dataset's design in mind: the petals, the clutter and the stem draw
# their colours from palettes that hold every class colour, so saturation is high on them as well
# as on the parts that decide the class. A model-free map can still score on the mask metrics
# when the discriminative parts are among the most saturated pixels; what it cannot know is which
# parts the model uses, and that is what `reliance corr.` measures.
#
# ## The cache
#
# Every cell is cached under `my-board/cache`, keyed by the data, the model, the explainer's
# options and source file, the metric and the versions. Running the board again computes nothing;
# adding an explainer computes only its cells:

# %%
again = run_leaderboard(config, progress=False)
print("computed", again.computed, "cached", again.cached)
assert again.computed == 0

# %% [markdown]
# To keep the explainer, put the class in a module (`my_method.py`) and pass it to the command
# line with `--import my_method.py`, or ship it in a package under the entry-point group
# `an8flower.explainers` ([The leaderboard](../board.md#your-own-explainers)).
