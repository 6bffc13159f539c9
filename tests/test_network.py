"""Tests of skitl._network: building networks, weights, heads, patterns."""

import pytest
import torch
import torch.nn as nn
import torchvision

from skitl._network import (
    build_network,
    find_head,
    freeze_parameters,
    load_weights,
    match_parameters,
    reinit_parameters,
    replace_head,
)


class SmallCNN(nn.Module):
    def __init__(self, n_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()
        )
        self.fc = nn.Linear(4 * 8 * 8, n_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


# -- building ---------------------------------------------------------------


def test_build_from_class_factory_and_instance():
    net, head = build_network(SmallCNN)
    assert isinstance(net, SmallCNN) and head == "fc"
    net, head = build_network(lambda: SmallCNN(3))
    assert net.fc.out_features == 3
    inst = SmallCNN()
    net, _ = build_network(inst)
    assert net is not inst
    assert _same(net.state_dict(), inst.state_dict())
    with torch.no_grad():
        net.fc.weight.add_(1.0)
    assert not torch.equal(net.fc.weight, inst.fc.weight)  # a real copy


def test_build_bad_module():
    with pytest.raises(ValueError, match="not a torchvision model name"):
        build_network("no_such_net")
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        build_network(lambda: 3)
    with pytest.raises(TypeError):
        build_network(42)


def test_torchvision_by_name_without_weights():
    net, head = build_network("resnet18")
    assert isinstance(net, torchvision.models.ResNet) and head == "fc"


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.mark.parametrize("layout", ["plain", "wrapped", "prefixed", "wrapped_prefixed"])
def test_weights_file_layouts(tmp_path, resnet18_state, layout):
    state = resnet18_state
    if "prefixed" in layout:
        state = {f"module.{k}": v for k, v in state.items()}
    if "wrapped" in layout:
        state = {"state_dict": state, "epoch": 7, "best_prec1": 91.2}
    path = tmp_path / "w.pt"
    torch.save(state, path)
    before = path.read_bytes()
    net, head = build_network("resnet18", str(path))
    assert head == "fc"
    assert _same(net.state_dict(), resnet18_state)
    assert path.read_bytes() == before  # the file is never modified
    net2, _ = build_network("resnet18", path)  # a pathlib.Path works too
    assert _same(net2.state_dict(), resnet18_state)


def test_weights_state_dict_not_modified():
    src = SmallCNN()
    state = {f"module.{k}": v.clone() for k, v in src.state_dict().items()}
    keys = list(state)
    net, _ = build_network(SmallCNN, state)
    assert list(state) == keys  # caller's mapping untouched
    assert _same(net.state_dict(), src.state_dict())


def test_weights_head_may_mismatch():
    src = SmallCNN(n_classes=100)
    net, head = build_network(SmallCNN, src.state_dict())  # 10-class head
    assert net.fc.out_features == 10
    assert torch.equal(net.features[0].weight, src.features[0].weight)
    # a headless backbone checkpoint is fine too
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    net, _ = build_network(SmallCNN, state)
    assert torch.equal(net.features[1].running_var, src.features[1].running_var)


def test_weights_mismatch_lists_keys():
    state = SmallCNN().state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["features.0.bias"]
    state["features.1.weight"] = torch.zeros(7)
    with pytest.raises(ValueError) as info:
        build_network(SmallCNN, state)
    msg = str(info.value)
    assert "missing (1): ['features.0.bias']" in msg
    assert "unexpected (1): ['extra.weight']" in msg
    assert "features.1.weight" in msg and "shape mismatch" in msg
    # strict=False loads what fits
    net, _ = build_network(SmallCNN, state, strict=False)
    assert torch.equal(net.features[0].weight, state["features.0.weight"])


def test_weights_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_network(SmallCNN, str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="torchvision weight names"):
        build_network(SmallCNN, "IMAGENET1K_V1")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(TypeError, match="not a state dict"):
        build_network(SmallCNN, tmp_path / "list.pt")
    torch.save(SmallCNN(), tmp_path / "model.pt")  # a pickled module
    with pytest.raises(ValueError, match="weights_only"):
        build_network(SmallCNN, tmp_path / "model.pt")


def test_load_weights_returns_skipped():
    net = SmallCNN()
    skipped = load_weights(net, SmallCNN(5).state_dict(), head="fc")
    assert skipped == ["fc.weight", "fc.bias"]


# -- heads ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet18", "fc"),
        ("vgg11", "classifier.6"),
        ("densenet121", "classifier"),
        ("mobilenet_v2", "classifier.1"),
        ("mobilenet_v3_small", "classifier.3"),
        ("efficientnet_b0", "classifier.1"),
        ("convnext_tiny", "classifier.2"),
        ("vit_b_16", "heads.head"),
        ("swin_t", "head"),
    ],
)
def test_find_and_replace_head_torchvision(name, expected):
    # built on the meta device: no memory, no initialisation cost
    with torch.device("meta"):
        net = torchvision.models.get_model(name, weights=None)
    head = find_head(net)
    assert head == expected
    old = net.get_submodule(head)
    new = replace_head(net, head, 7, random_state=0)
    assert net.get_submodule(head) is new
    assert new.out_features == 7 and new.in_features == old.in_features
    assert (new.bias is None) == (old.bias is None)


def test_replace_head_real_forward_and_seed():
    net, head = build_network("resnet18")
    replace_head(net, head, 3, random_state=0)
    net.eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    w = net.fc.weight.clone()
    state = torch.random.get_rng_state()
    replace_head(net, head, 3, random_state=0)
    assert torch.equal(net.fc.weight, w)  # seeded
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched


def test_find_head_explicit_and_errors():
    net = SmallCNN()
    assert find_head(net, "fc") == "fc"
    with pytest.raises(ValueError, match="does not name"):
        find_head(net, "nope")
    with pytest.raises(ValueError, match="nn.Linear"):
        find_head(net, "features.0")
    with pytest.raises(ValueError, match="Could not find"):
        find_head(nn.Sequential(nn.Conv2d(1, 2, 1)))


def test_replace_lazy_head():
    net = nn.Sequential(nn.Flatten(), nn.LazyLinear(5))
    new = replace_head(net, find_head(net), 3, random_state=0)
    assert isinstance(new, nn.LazyLinear)
    assert net(torch.zeros(2, 4)).shape == (2, 3)


# -- patterns ---------------------------------------------------------------


def test_match_parameters():
    net = SmallCNN()
    assert match_parameters(net, "fc.*") == ["fc.weight", "fc.bias"]
    assert match_parameters(net, "fc") == ["fc.weight", "fc.bias"]  # module name
    assert match_parameters(net, ["*.bias", "fc.weight"]) == [
        "features.0.bias",
        "features.1.bias",
        "fc.weight",
        "fc.bias",
    ]
    with pytest.raises(ValueError, match="matches no parameter"):
        match_parameters(net, ["fc.*", "layer9.*"])
    with pytest.raises(TypeError):
        match_parameters(net, [3])


def test_freeze_parameters():
    net = SmallCNN()
    names = freeze_parameters(net, "features")
    assert names == [n for n, _ in net.named_parameters() if n.startswith("features")]
    assert all(not p.requires_grad for p in net.features.parameters())
    assert all(p.requires_grad for p in net.fc.parameters())


def _perturbed_cnn():
    torch.manual_seed(1)
    net = SmallCNN()
    with torch.no_grad():  # make every value distinguishable from an init
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        net.features[1].running_mean.add_(3.0)
        net.features[1].running_var.add_(2.0)
    return net


def test_reinit_parameters_exact():
    net = _perturbed_cnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    names = reinit_parameters(net, ["features.1", "fc.weight"], random_state=0)
    assert names == ["features.1.weight", "features.1.bias", "fc.weight"]
    after = net.state_dict()
    for key in before:
        changed = not torch.equal(before[key], after[key])
        expected = key in names or key in (
            "features.1.running_mean",  # BatchNorm fully re-initialised
            "features.1.running_var",
            "features.1.num_batches_tracked",
        )
        assert changed == expected or key.endswith("num_batches_tracked"), key
    # reset values are the layers' defaults ...
    assert torch.equal(after["features.1.weight"], torch.ones(4))
    assert torch.equal(after["features.1.running_var"], torch.ones(4))
    # ... and fc.bias was kept although reset_parameters touches it
    assert torch.equal(after["fc.bias"], before["fc.bias"])
    bound = 1 / (4 * 8 * 8) ** 0.5
    assert after["fc.weight"].abs().max() <= bound


def test_reinit_seeded_and_partial_bn():
    a, b = _perturbed_cnn(), _perturbed_cnn()
    reinit_parameters(a, "fc", random_state=3)
    reinit_parameters(b, "fc", random_state=3)
    assert torch.equal(a.fc.weight, b.fc.weight)
    c = _perturbed_cnn()
    before = c.features[1].running_mean.clone()
    reinit_parameters(c, "features.1.weight", random_state=0)
    # only part of the BatchNorm was re-initialised: its statistics stay
    assert torch.equal(c.features[1].running_mean, before)


def test_reinit_fallback_for_bare_parameters():
    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.full((1, 4), 5.0))
            self.proj = nn.Parameter(torch.full((4, 4), 5.0))
            self.head = nn.Linear(4, 2)

    net = WithToken()
    reinit_parameters(net, ["token", "proj"], random_state=0)
    assert not torch.equal(net.token, torch.full((1, 4), 5.0))
    assert net.proj.abs().max() < 5.0


def test_weights_from_a_file_skip_the_throwaway_initialisation(tmp_path):
    """A class or factory with a weights file is built on the meta device and the
    file's tensors assigned: the same network as building and loading, without a
    random initialisation. Anything the file does not hold falls back to a real
    build (a non-persistent buffer, a head left out of the file)."""
    import torchvision

    from skitl._network import build_network

    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), path)
    net, head = build_network(torchvision.models.resnet18, str(path))
    assert head == "fc"
    for (k, a), b in zip(net.state_dict().items(), ref.state_dict().values(), strict=True):
        assert a.device.type == "cpu" and torch.equal(a, b), k
    assert all(p.requires_grad for p in net.parameters())

    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", torch.full((4,), 3.0), persistent=False)
            self.body = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.body(x * self.scale))

    src = WithBuffer()
    torch.save(src.state_dict(), tmp_path / "b.pt")
    built, _ = build_network(WithBuffer, str(tmp_path / "b.pt"))
    assert torch.equal(built.scale, torch.full((4,), 3.0))
    assert torch.equal(built.body.weight, src.body.weight)
    no_head = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    torch.save(no_head, tmp_path / "nohead.pt")
    built, _ = build_network(WithBuffer, str(tmp_path / "nohead.pt"))
    assert not built.fc.weight.is_meta and torch.isfinite(built.fc.weight).all()
