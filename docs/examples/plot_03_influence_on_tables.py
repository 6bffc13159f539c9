"""
Influence on any table: ``estimator=None``
==========================================

Without a network, :class:`~skitl.InfluenceSampleSelector` treats the
columns of ``X`` as the features of a multinomial logistic regression and
scores each row by its influence on the validation loss of that model. So it
cleans any numeric table, and as an imbalanced-learn sampler it is a step of
:class:`imblearn.pipeline.Pipeline` (a scikit-learn ``Pipeline`` cannot drop
rows): the rows it removes are removed for the following steps only while
fitting; at prediction time every row goes through.

Here: scikit-learn's breast cancer table (569 tumours, 30 measurements), 20 %
of the training labels flipped.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from imblearn.pipeline import make_pipeline
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from skitl import InfluenceSampleSelector
from skitl.datasets import add_label_noise

torch.set_num_threads(1)

X, y = load_breast_cancer(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.4, stratify=y, random_state=0)
y_noisy, is_corrupted = add_label_noise(y_train, 0.2, random_state=0)
print(f"{len(y_train)} training rows, {is_corrupted.sum()} with a flipped label; "
      f"{len(y_test)} clean test rows")

# %%
# The pipeline
# ------------
# Standardise, drop the harmful rows, fit a logistic regression on the rest.
# The selector's own model is an L2-regularised logistic regression fitted
# exactly on the standardised columns; with no validation set given, it
# cross-fits: each of ``cv`` folds is the validation set of a model fitted on
# the other folds.
pruned = make_pipeline(
    StandardScaler(),
    InfluenceSampleSelector(alpha=1e-2, random_state=0),
    LogisticRegression(),
)
plain = make_pipeline(StandardScaler(), LogisticRegression())
oracle = make_pipeline(StandardScaler(), LogisticRegression())

pruned.fit(X_train, y_noisy)
plain.fit(X_train, y_noisy)
oracle.fit(X_train[~is_corrupted], y_noisy[~is_corrupted])

selector = pruned[1]
removed = ~selector.support_
print(f"removed {removed.sum()} rows, {is_corrupted[removed].mean():.0%} of them "
      f"corrupted; found {is_corrupted[removed].sum()} of the {is_corrupted.sum()} "
      "corrupted rows")
results = {
    "all rows (noisy)": plain.score(X_test, y_test),
    "influence-pruned": pruned.score(X_test, y_test),
    "oracle: corrupted rows dropped": oracle.score(X_test, y_test),
}
for name, acc in results.items():
    print(f"{name:32s} test accuracy {acc:.3f}")

# %%
# Scores of clean and corrupted rows
# ----------------------------------
# ``scores_[i]`` is the predicted increase of the mean validation loss if row
# ``i`` were removed: rows below the dashed line (0, the default
# ``threshold``) are predicted to hurt and are removed.
scores = selector.scores_
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
bins = np.linspace(np.percentile(scores, 0.5), np.percentile(scores, 99.5), 40)
axes[0].hist(scores[~is_corrupted], bins=bins, alpha=0.6, label="clean")
axes[0].hist(scores[is_corrupted], bins=bins, alpha=0.6, label="corrupted")
axes[0].axvline(0.0, color="k", lw=1, ls="--")
axes[0].set_xlabel("scores_")
axes[0].set_title(f"AUROC of -scores_ for corrupted rows: "
                  f"{roc_auc_score(is_corrupted, -scores):.2f}", fontsize=10)
axes[0].legend()

names = list(results)
axes[1].barh(names, [results[n] for n in names], color=["grey", "tab:blue", "tab:green"])
axes[1].set_xlim(min(results.values()) - 0.05, 1.0)
axes[1].invert_yaxis()
axes[1].set_xlabel("test accuracy")
fig.tight_layout()

# %%
# With a validation set you trust
# -------------------------------
# ``fit(X, y, X_val=..., y_val=...)`` scores every training row against that
# set instead of cross-fitting (all of it is kept as the validation objective).
# Here a third of the clean test rows stands in for it; the selector is used
# on its own, on standardised columns.
scaler = StandardScaler().fit(X_train)
X_val, y_val = scaler.transform(X_test[:75]), y_test[:75]
sel = InfluenceSampleSelector(alpha=1e-2).fit(scaler.transform(X_train), y_noisy,
                                              X_val=X_val, y_val=y_val)
print(f"against a clean validation set: removed {sel.n_removed_} rows, "
      f"{is_corrupted[~sel.support_].mean():.0%} of them corrupted "
      f"(AUROC {roc_auc_score(is_corrupted, -sel.scores_):.2f})")
