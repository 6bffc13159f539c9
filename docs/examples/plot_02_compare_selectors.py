"""
Comparing selectors on the digits task
======================================

Which training samples should go before fine-tuning? This example scores the
same noisy target training set with four selectors, fine-tunes the same
pretrained network on what each one keeps, and compares

- the test accuracy after fine-tuning (the clean test labels), and
- how well each score separates the samples whose label was corrupted from
  the clean ones (histograms, and the AUROC of "low score = corrupted").

The selectors share one contract: ``scores_`` with "higher = keep",
``support_`` (the kept samples) and ``fit_resample``:

- :class:`~skitl.InfluenceSampleSelector` with ``val_trim=0``: the paper's
  rule, the plain mean validation loss;
- :class:`~skitl.InfluenceSampleSelector` with ``val_trim="auto"`` (the
  default): the cross-fitted validation folds leave out the samples the head
  misclassifies, whose labels are often the wrong ones;
- :class:`~skitl.selection.LossSelector`: the out-of-fold loss of each
  sample (the small-loss trick), removing as many samples as the influence
  selector did;
- :class:`~skitl.selection.RandomSelector`: the control, same count.

One seed and one short training schedule, so differences of a point or two
are noise; the benchmarks in this documentation repeat this over seeds,
noise kinds and schedules.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.base import clone
from sklearn.metrics import roc_auc_score

from skitl import InfluenceSampleSelector, TransferClassifier
from skitl.datasets import load_digits_transfer
from skitl.models import pretrain_source_cnn
from skitl.selection import LossSelector, RandomSelector

torch.set_num_threads(1)

data = load_digits_transfer(noise=0.3, random_state=0)
source_net = pretrain_source_cnn(data.X_source, data.y_source, epochs=30, random_state=0)

# The pretrained network the selectors analyse, and the fine-tuning recipe.
base = TransferClassifier(source_net, max_epochs=20, lr=3e-3, backbone_lr_scale=1.0,
                          random_state=0)

# %%
# Score the training set
# ----------------------
# The influence selectors pick their own count (every sample with a negative
# score, within the class guards); the baselines then remove the same number
# as the default influence selector, so that only *which* samples go differs.
selectors = {
    "influence, val_trim=0": InfluenceSampleSelector(base, val_trim=0.0, random_state=0),
    'influence, val_trim="auto"': InfluenceSampleSelector(base, random_state=0),
}
fitted = {name: sel.fit(data.X_train, data.y_train) for name, sel in selectors.items()}
n_auto = fitted['influence, val_trim="auto"'].n_removed_
fitted["out-of-fold loss"] = LossSelector(base, max_remove=n_auto, random_state=0).fit(
    data.X_train, data.y_train)
fitted["random"] = RandomSelector(max_remove=n_auto, random_state=0).fit(
    data.X_train, data.y_train)

for name, sel in fitted.items():
    removed = ~sel.support_
    precision = data.is_corrupted[removed].mean()
    print(f"{name:28s} removed {removed.sum():3d}, of which corrupted {precision:.0%}")

# %%
# Fine-tune on what each selector kept
# ------------------------------------
# The same recipe (``clone(base)``) each time; "no pruning" trains on all 700
# samples, 30 % of them with a wrong label.
accuracy = {"no pruning": clone(base).fit(data.X_train, data.y_train)
            .score(data.X_test, data.y_test)}
for name, sel in fitted.items():
    keep = sel.support_
    clf = clone(base).fit(data.X_train[keep], data.y_train[keep])
    accuracy[name] = clf.score(data.X_test, data.y_test)
for name, acc in accuracy.items():
    print(f"{name:28s} test accuracy {acc:.3f}")

fig, ax = plt.subplots(figsize=(6, 3))
names = list(accuracy)
ax.barh(names, [accuracy[n] for n in names], color="tab:blue")
ax.set_xlim(min(accuracy.values()) - 0.05, 1.0)
ax.invert_yaxis()
ax.set_xlabel("test accuracy after fine-tuning")
fig.tight_layout()

# %%
# Clean versus corrupted scores
# -----------------------------
# A good score puts the corrupted samples (orange) low and the clean ones
# (blue) high. The AUROC is the probability that a random corrupted sample
# scores below a random clean one (0.5 = no better than chance). The random
# selector's scores carry no information by construction and are left out.
fig, axes = plt.subplots(1, 3, figsize=(10, 3))
for ax, name in zip(axes, ["influence, val_trim=0", 'influence, val_trim="auto"',
                           "out-of-fold loss"]):
    scores = fitted[name].scores_
    auroc = roc_auc_score(data.is_corrupted, -scores)
    bins = np.linspace(np.percentile(scores, 1), np.percentile(scores, 99), 40)
    ax.hist(scores[~data.is_corrupted], bins=bins, alpha=0.6, label="clean")
    ax.hist(scores[data.is_corrupted], bins=bins, alpha=0.6, label="corrupted")
    if name.startswith("influence"):
        ax.axvline(0.0, color="k", lw=1, ls="--")  # the default threshold
    ax.set_title(f"{name}\nAUROC {auroc:.2f}", fontsize=9)
    ax.set_xlabel("scores_")
axes[0].legend()
fig.tight_layout()

# %%
# What to take from it: with noisy labels, the paper's rule scores against a
# noisy validation objective, which makes clean samples look harmful too
# (their histograms overlap); ``val_trim="auto"`` fixes that, and the simple
# out-of-fold loss is a strong baseline for plain label noise. Influence earns
# its keep where the harm is not a wrong label: see the benchmarks.
