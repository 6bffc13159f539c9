"""
Reading ``scores_``: sign, scale, and which samples
===================================================

After ``fit``, an :class:`~skitl.InfluenceSampleSelector` holds one number
per training sample:

``scores_[i]`` = the predicted **increase** of the mean validation loss if
sample ``i`` were removed from the training set.

- ``scores_[i] > 0``: removing the sample would raise the validation loss,
  so it helps;
- ``scores_[i] < 0``: removing it would *lower* the validation loss, so it
  is harmful;
- the selector removes the samples with ``scores_ < threshold``
  (``threshold=0`` by default), most harmful first. Higher score = keep.

This is Koh & Liang's (2017) influence function with the opposite sign and a
``1/n`` scale: removing one of ``n`` samples moves the fitted parameters by
about ``1/n``, so the scores are of order ``1/n`` too.

This example reads the scores on the noisy digits task, shows the images
with the lowest and highest scores, and checks the meaning of the numbers by
actually removing samples and refitting.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from skitl import InfluenceSampleSelector, TransferClassifier
from skitl.datasets import load_digits_transfer
from skitl.influence import extract_features, fit_head, predict_proba_head
from skitl.models import pretrain_source_cnn

torch.set_num_threads(1)

data = load_digits_transfer(noise=0.2, random_state=0)
source_net = pretrain_source_cnn(data.X_source, data.y_source, epochs=30, random_state=0)
n = len(data.y_train)

# The selector analyses the classification layer of the pretrained network
# ("fc", on 64 frozen features), fitted on the target training data.
sel = InfluenceSampleSelector(TransferClassifier(source_net), random_state=0)
sel.fit(data.X_train, data.y_train)

# %%
# Sign and scale
# --------------
scores = sel.scores_
print(f"n = {n} training samples, 1/n = {1 / n:.1e}")
quantiles = np.percentile(scores, [1, 25, 50, 75, 99])
print("quantiles of scores_ (1, 25, 50, 75, 99 %):",
      ", ".join(f"{q:.1e}" for q in quantiles))
print(f"median |n * scores_| = {np.median(np.abs(n * scores)):.2f}")
print(f"{np.sum(scores < 0)} samples score below 0; removed {sel.n_removed_} "
      f"(the class guards kept {sel.n_protected_} of them)")
removed = ~sel.support_
print(f"of the removed, {data.is_corrupted[removed].mean():.0%} had a wrong label; "
      f"of the kept, {data.is_corrupted[~removed].mean():.1%}")
print(f"AUROC of -scores_ for the wrong labels: "
      f"{roc_auc_score(data.is_corrupted, -scores):.2f}")

fig, ax = plt.subplots(figsize=(6, 3))
bins = np.linspace(*np.percentile(n * scores, [0.5, 99.5]), 50)
ax.hist(n * scores[~data.is_corrupted], bins=bins, alpha=0.6, label="label right")
ax.hist(n * scores[data.is_corrupted], bins=bins, alpha=0.6, label="label wrong")
ax.axvline(0.0, color="k", lw=1, ls="--")
ax.set_xlabel("n * scores_  (removed: left of the dashed line)")
ax.legend()
fig.tight_layout()

# %%
# The most harmful and the most helpful samples
# ---------------------------------------------
# Each image shows its *given* (possibly wrong) training label; red titles
# mark the corrupted ones, with the true label in brackets. A digit carrying
# another digit's label pulls the head away from what the validation data
# needs, so the lowest scores are mostly wrong labels; the highest are clean,
# typical samples.
order = np.argsort(scores)
fig, axes = plt.subplots(2, 8, figsize=(10, 3.2))
for row, (idx, what) in enumerate([(order[:8], "lowest"), (order[::-1][:8], "highest")]):
    for ax, i in zip(axes[row], idx):
        ax.imshow(data.X_train[i, 0], cmap="gray_r")
        wrong = data.is_corrupted[i]
        title = f"{data.y_train[i]}" + (f" ({data.y_train_clean[i]})" if wrong else "")
        ax.set_title(f"{title}\n{n * scores[i]:+.2f}", fontsize=8,
                     color="tab:red" if wrong else "black")
        ax.axis("off")
    axes[row, 0].text(-0.6, 0.5, what, transform=axes[row, 0].transAxes,
                      ha="right", va="center")
fig.suptitle("given label (true label) and n * scores_", fontsize=9)

# %%
# What the number predicts, checked
# ---------------------------------
# With a validation set given, ``scores_[i]`` is a first-order prediction of
# ``L_val(head fitted without i) - L_val(head fitted on all)``, the change of
# the mean cross-entropy on the validation set. Here the validation set is
# 200 clean target images; for 20 samples (the 10 lowest and 10 highest
# scores) the head is refitted without them, exactly, from the same features.
X_val, y_val = data.X_test[:200], data.y_test[:200]
sel_val = InfluenceSampleSelector(TransferClassifier(source_net))
sel_val.fit(data.X_train, data.y_train, X_val=X_val, y_val=y_val)
# ``alpha="scale"`` resolved to a number on these features; refit with it.
alpha = sel_val.influence_["alpha"]

F_train = extract_features(source_net, data.X_train, layer="fc")
F_val = extract_features(source_net, X_val, layer="fc")


def val_loss(W, b):
    proba = predict_proba_head(F_val, W, b)
    return -np.mean(np.log(proba[np.arange(len(y_val)), y_val]))


W, b = fit_head(F_train, data.y_train, 10, alpha=alpha)
loss_all = val_loss(W, b)
order_val = np.argsort(sel_val.scores_)
checked = np.concatenate([order_val[:10], order_val[-10:]])
actual = []
for i in checked:
    keep = np.arange(n) != i
    W_i, b_i = fit_head(F_train[keep], data.y_train[keep], 10, alpha=alpha, init=(W, b))
    actual.append(val_loss(W_i, b_i) - loss_all)
actual = np.array(actual)
predicted = sel_val.scores_[checked]
print(f"correlation of predicted and actual change: {np.corrcoef(predicted, actual)[0, 1]:.3f}")
print(f"sign agrees for {np.mean(np.sign(predicted) == np.sign(actual)):.0%} of them")

fig, ax = plt.subplots(figsize=(4.5, 4))
lim = 1.1 * np.abs(np.concatenate([predicted, actual])).max()
ax.plot([-lim, lim], [-lim, lim], color="grey", lw=1)
ax.scatter(predicted, actual, c=np.where(data.is_corrupted[checked], "tab:red", "tab:blue"))
ax.axhline(0, color="k", lw=0.5)
ax.axvline(0, color="k", lw=0.5)
ax.set_xlabel("scores_[i] (predicted)")
ax.set_ylabel("validation loss change when i is removed")
ax.set_title("red: wrong label", fontsize=9)
fig.tight_layout()

# %%
# Two things to keep in mind. The scores predict the effect of removing *one*
# sample; removing many at once is not their sum (the selector's class guards
# and ``max_remove`` limit the damage). And without a validation set the
# scores are cross-fitted: each is the mean over the folds in which the
# sample was trained on, against validation folds cut from the (noisy)
# training data, which is why ``val_trim="auto"`` matters.
