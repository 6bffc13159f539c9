"""
A torchvision model by name, with a weights file
================================================

:class:`~skitl.TransferClassifier` builds a torchvision model from its name
(through :func:`torchvision.models.get_model`), loads pretrained weights,
finds the classification layer (``fc`` for a ResNet) and replaces it with one
for the target classes.

With internet access, ``weights="DEFAULT"`` (or ``"IMAGENET1K_V1"``)
downloads the ImageNet weights on first use::

    TransferClassifier("resnet18", weights="DEFAULT")

This example runs offline, so it writes its own weights file: the state dict
of a freshly initialised ResNet-18, saved with :func:`torch.save`. A path to
such a file (or to a checkpoint with a ``"state_dict"`` entry, with or
without the ``module.`` prefix of ``DataParallel``) is what ``weights``
takes for your own pretrained networks. The weights here are random, so the
accuracy below only shows that the plumbing works, not what ImageNet
features would give.
"""

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skitl import InfluenceSampleSelector, TransferClassifier

torch.set_num_threads(1)

# %%
# A weights file
# --------------
torch.manual_seed(0)
resnet = torchvision.models.resnet18(weights=None)
weights_dir = tempfile.mkdtemp()
weights_path = os.path.join(weights_dir, "resnet18_pretrained.pt")
torch.save(resnet.state_dict(), weights_path)
print(f"saved {len(resnet.state_dict())} tensors to {os.path.basename(weights_path)}")

# %%
# Tiny images
# -----------
# scikit-learn's 8x8 digits, upsampled to 32x32 and repeated over three
# channels: the input a ResNet expects, small enough for a CPU. With ImageNet
# weights, normalise the images as the weights expect
# (:data:`skitl.datasets.IMAGENET_MEAN`, :data:`skitl.datasets.IMAGENET_STD`).
digits = load_digits()
images = torch.as_tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
X = images.repeat(1, 3, 1, 1).numpy()
X_train, X_test, y_train, y_test = train_test_split(
    X, digits.target, train_size=240, test_size=160, stratify=digits.target,
    random_state=0)
print("X_train:", X_train.shape, X_train.dtype)

# %%
# Prune and fine-tune
# -------------------
# ``strategy="linear_probe"`` trains only the new head on the frozen
# backbone (cheap on a CPU); ``"finetune"`` would train every layer. The
# selector scores the samples with the head fitted on the same frozen
# features.
clf = TransferClassifier(
    "resnet18",
    weights=weights_path,
    strategy="linear_probe",
    selector=InfluenceSampleSelector(random_state=0),
    max_epochs=8,
    lr=1e-2,
    batch_size=32,
    random_state=0,
)
clf.fit(X_train, y_train)
print("new head:", clf.net_.module_.fc)
print(f"removed {clf.selector_.n_removed_} of {len(y_train)} training images")
print(f"test accuracy (random backbone, linear probe): {clf.score(X_test, y_test):.3f}")

# %%
# Predictions on a few test images (green: right, red: wrong).
pred = clf.predict(X_test[:10])
fig, axes = plt.subplots(1, 10, figsize=(10, 1.6))
for ax, img, p, t in zip(axes, X_test[:10], pred, y_test[:10]):
    ax.imshow(img[0], cmap="gray_r")
    ax.set_title(f"{p}", color="tab:green" if p == t else "tab:red")
    ax.axis("off")
fig.tight_layout()

# %%
# The temporary weights file is no longer needed.
os.remove(weights_path)
os.rmdir(weights_dir)
