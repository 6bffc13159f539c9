"""
Quick start: prune, then fine-tune, in a Pipeline with GridSearchCV
===================================================================

skitl's method is one scikit-learn estimator: a
:class:`~skitl.TransferClassifier` whose ``selector`` is an
:class:`~skitl.InfluenceSampleSelector`. On each call to ``fit`` the selector
scores every training sample with the *pretrained* network, removes the
samples predicted to be harmful, and the classifier fine-tunes that network on
the rest. Because it is an ordinary estimator, it is the last step of a
:class:`~sklearn.pipeline.Pipeline` and its parameters (and the selector's,
as ``clf__selector__<name>``) are searched by
:class:`~sklearn.model_selection.GridSearchCV`.

The data is skitl's embedded digits transfer task: a small CNN is pretrained
on clean digits (the source domain); the target digits are rotated and
blurred, and 30 % of their training labels are wrong.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from skitl import InfluenceSampleSelector, TransferClassifier
from skitl.datasets import load_digits_transfer
from skitl.models import pretrain_source_cnn

torch.set_num_threads(1)  # tiny networks: more threads only add overhead

# %%
# The transfer task
# -----------------
# ``X_*`` are float32 images of shape ``(n, 1, 8, 8)``; ``is_corrupted``
# marks the training samples whose label was changed (never used for
# training, only to look at the results).
data = load_digits_transfer(noise=0.3, random_state=0)
print("source:", data.X_source.shape, "target train:", data.X_train.shape,
      "target test:", data.X_test.shape)
print(f"wrong training labels: {data.is_corrupted.sum()} of {len(data.y_train)}")

source_net = pretrain_source_cnn(data.X_source, data.y_source, epochs=30, random_state=0)
with torch.no_grad():
    pred = source_net(torch.as_tensor(data.X_test)).argmax(1).numpy()
print(f"pretrained network on the target test set: {np.mean(pred == data.y_test):.3f}")

# %%
# One estimator for the whole method
# ----------------------------------
# The selector has no ``estimator`` of its own: inside the classifier it
# analyses exactly the pretrained network the classifier then fine-tunes.
# The network instance is copied, never trained in place. The first pipeline
# step stands for any preprocessing that keeps the rows.
clf = TransferClassifier(
    source_net,
    selector=InfluenceSampleSelector(random_state=0),
    max_epochs=20,
    lr=3e-3,
    backbone_lr_scale=1.0,
    random_state=0,
)
pipe = Pipeline([
    ("clip", FunctionTransformer(np.clip, kw_args={"a_min": 0.0, "a_max": 1.0})),
    ("clf", clf),
])

# %%
# Does pruning help here?
# -----------------------
# Let cross-validation decide: the grid holds the classifier without a
# selector and with one. Each candidate is fitted on 3 folds, and the
# selector scores the training part of each fold again.
candidates = {
    "no pruning": None,
    "influence pruning": InfluenceSampleSelector(random_state=0),
}
search = GridSearchCV(pipe, {"clf__selector": list(candidates.values())}, cv=3)
search.fit(data.X_train, data.y_train)

best = search.best_estimator_["clf"]
print("best:", list(candidates)[search.best_index_])
print(f"test accuracy of the refitted best pipeline: {search.score(data.X_test, data.y_test):.3f}")
if best.selector_ is not None:
    print(f"it removed {best.selector_.n_removed_} of {len(data.y_train)} training samples")

# %%
# The cross-validation folds are scored with the *noisy* labels, so their
# accuracies are lower than the clean test accuracy above; they still rank the
# candidates.
means = search.cv_results_["mean_test_score"]
stds = search.cv_results_["std_test_score"]
fig, ax = plt.subplots(figsize=(6, 3))
ax.barh(list(candidates), means, xerr=stds, color=["grey", "tab:blue"])
ax.set_xlim(means.min() - 0.1, min(1.0, means.max() + 0.05))
ax.set_xlabel("mean 3-fold accuracy (noisy validation labels)")
ax.set_title("GridSearchCV over the selector")
fig.tight_layout()

# %%
# Any selector parameter can join the grid, e.g.
# ``{"clf__selector__threshold": [0.0, -1e-4], "clf__strategy": ["finetune",
# "linear_probe"]}``. How much pruning gains depends on the training
# schedule: the longer fine-tuning runs, the more of the wrong labels it
# memorises; the benchmarks in this documentation measure both regimes.
