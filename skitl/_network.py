"""Plumbing shared by the classifier and the selectors: networks and heads.

Resolve a module specification, load pretrained weights, find and replace the
classification layer, re-initialise or freeze parameters by glob pattern.
"""

import torch.nn as nn

# Attribute names torchvision's families use for their classifier, most
# specific first. The head itself is the last nn.Linear inside that attribute.
_HEAD_ATTRIBUTES = ("fc", "classifier", "heads", "head", "linear", "last_linear")


def _last_linear(module, prefix):
    found = None
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            found = f"{prefix}.{name}" if name else prefix
    return found


def find_head(net, head=None):
    """Return the dotted name of the classification layer of ``net``.

    Parameters
    ----------
    net : torch.nn.Module
        The network.
    head : str, optional
        Dotted name given by the user (``"classifier.1"``); checked to exist and
        to be an ``nn.Linear``.

    Returns
    -------
    name : str
        Dotted module name of the final ``nn.Linear`` classification layer.

    Raises
    ------
    ValueError
        When ``head`` does not name an ``nn.Linear`` or no head can be found.
    """
    if head is not None:
        try:
            sub = net.get_submodule(head)
        except AttributeError as exc:
            raise ValueError(
                f"head={head!r} does not name a submodule of {type(net).__name__}."
            ) from exc
        if not isinstance(sub, nn.Linear):
            raise ValueError(
                f"head={head!r} names a {type(sub).__name__}; skitl needs the final "
                "nn.Linear classification layer."
            )
        return head
    for attr in _HEAD_ATTRIBUTES:
        sub = getattr(net, attr, None)
        if isinstance(sub, nn.Module):
            name = _last_linear(sub, attr)
            if name is not None:
                return name
    name = _last_linear(net, "")
    if name:
        return name.lstrip(".")
    raise ValueError(
        f"Could not find a classification layer (nn.Linear) in {type(net).__name__}; "
        "name it with head='dotted.name'."
    )
