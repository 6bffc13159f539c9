"""Which parameters the deep path analyses: the one pattern rule of skitl."""

from .._network import match_parameters


def select_parameters(net, params):
    """Names of the parameters analysed.

    Parameters
    ----------
    net : torch.nn.Module
        The network.
    params : "all", str or list of str
        ``"all"``, or patterns as for ``freeze=`` / ``reinit=``: a pattern
        naming a module (``"layer4"``, ``"fc"``) selects every parameter
        under it; otherwise fnmatch globs over ``net.named_parameters()``
        (``"layer4.1.*"``, ``"*.bn*.weight"``).

    Returns
    -------
    names : list of str
        In ``named_parameters`` order.

    Raises
    ------
    ValueError
        If a pattern matches nothing.
    """
    if isinstance(params, str) and params == "all":
        return [n for n, _ in net.named_parameters()]
    return match_parameters(net, params)
