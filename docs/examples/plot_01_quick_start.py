"""
Quick start: let the target decide which selector to use
========================================================

skitl's method is one scikit-learn estimator: a
:class:`~skitl.TransferClassifier` whose ``selector`` removes training
samples before the pretrained network is fine-tuned on the rest. No single
selector wins on every pool, so the workflow skitl recommends is a
:class:`~sklearn.model_selection.GridSearchCV` over the selector, whose test
folds hold *target* samples only
(:class:`~skitl.model_selection.TargetStratifiedKFold`) and which scores on
them (:func:`~skitl.metrics.make_target_scorer`).
:func:`~skitl.model_selection.search_report` then says which candidate won
and whether the target could tell it from the others.

The data is skitl's embedded digits transfer task: a small CNN is pretrained
on clean digits (the source domain); the training pool holds 150 target
digits and 350 correctly labelled digits rotated by 90 degrees, which look
nothing like the target.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import sklearn
import torch
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from skitl import TransferClassifier
from skitl.datasets import load_digits_transfer
from skitl.metrics import make_target_scorer
from skitl.model_selection import TargetStratifiedKFold, search_report, selector_grid
from skitl.models import pretrain_source_cnn

torch.set_num_threads(1)  # tiny networks: more threads only add overhead

# %%
# The pool
# --------
# ``sample_domain`` follows skada's convention: negative for the target,
# positive for auxiliary samples.
data = load_digits_transfer(noise=0.0, random_state=0)
source_net = pretrain_source_cnn(data.X_source, data.y_source, random_state=0)

X_aux = np.rot90(data.X_train[150:500], 1, axes=(2, 3)).copy()
X = np.concatenate([data.X_train[:150], X_aux])
y = data.y_train[:500]
sample_domain = np.r_[np.full(150, -1), np.full(350, 1)]

with torch.no_grad():
    pred = source_net(torch.as_tensor(data.X_test)).argmax(1).numpy()
print(f"pretrained network on the target test set: {np.mean(pred == data.y_test):.3f}")

# %%
# One estimator, searched over its selector
# -----------------------------------------
# ``sample_domain`` travels by scikit-learn's metadata routing: the splitter
# uses it to put target samples only into the test folds, the classifier
# passes it to the selector, and the scorer scores the target samples. The
# grid is made before ``set_fit_request``: its ``"undersample"`` candidate
# imports a part of imbalanced-learn that changes the routing of estimators
# configured earlier (see :func:`~skitl.model_selection.selector_grid`). The
# first pipeline step stands for any preprocessing that keeps the rows.
sklearn.set_config(enable_metadata_routing=True)
grid = selector_grid(["none", "target_only", "influence", "domain"], random_state=0)
clf = TransferClassifier(source_net, max_epochs=30, lr=3e-3, backbone_lr_scale=1.0,
                         random_state=0).set_fit_request(sample_domain=True)
pipe = Pipeline([
    ("clip", FunctionTransformer(np.clip, kw_args={"a_min": 0.0, "a_max": 1.0})),
    ("clf", clf),
])
search = GridSearchCV(
    pipe, {f"clf__{name}": values for name, values in grid.items()},
    cv=TargetStratifiedKFold(3, shuffle=True, random_state=0),
    scoring=make_target_scorer(),
)
search.fit(X, y, sample_domain=sample_domain)

# %%
# What the target says
# --------------------
# The report compares each candidate with the best split by split. A pick is
# *resolved* only when no other candidate is within one standard error of
# the paired difference; otherwise the tied candidates are equally good as
# far as these target samples can tell.
report = search_report(search)
print(report.text)
print("pick:", report.best, "| resolved:", report.resolved)
best = search.best_estimator_["clf"]
print(f"test accuracy of the refitted pick: {best.score(data.X_test, data.y_test):.3f}")
if best.selector_ is not None:
    print(f"it removed {best.selector_.n_removed_} of 350 auxiliary samples")

table = report.table
fig, ax = plt.subplots(figsize=(6, 3))
names = [row["candidate"] for row in table]
ax.barh(names, [row["mean"] for row in table], xerr=[row["std"] for row in table],
        color=["tab:blue" if row["candidate"] == report.best else "grey" for row in table])
ax.invert_yaxis()
ax.set_xlabel("accuracy on held-out target digits (3 folds)")
ax.set_title("GridSearchCV over the selector, scored on the target")
fig.tight_layout()

# %%
# Add ``memory="some/dir"`` to :func:`~skitl.model_selection.selector_grid`
# to compute features and scores once per split for every candidate, and
# ``"influence_auto"``, ``"loss_auto"`` or ``"undersample"`` to the
# candidates. With a separate clean target set instead of marked target
# samples, :func:`~skitl.model_selection.stack_target` puts it into the pool.
