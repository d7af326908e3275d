"""The network zoo against the papers: shapes, gradients, parameter counts, FLOPs, bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pocketseg_core.errors import NetworkConfigError
from pocketseg_core.networks import (
    LVNet,
    PocketNet,
    count_flops,
    count_parameters,
    create_network,
    network_arguments,
    network_names,
)
from pocketseg_core.networks.blocks import DenseNetBlock, InvertedResidualBlock, ResNetBlock

torch.manual_seed(0)

EXPECTED_NAMES = [
    f"{prefix}{block}{dims}d"
    for dims in (3, 2)
    for block in ("unet", "resnet", "densenet")
    for prefix in ("pocket_", "")
] + ["lvnet"]

# PocketNet Table 1 (3D, NFBS, 1 input channel, 2 classes)
TABLE_1 = {
    "unet3d": 5.5e6,
    "pocket_unet3d": 0.150e6,
    "resnet3d": 5.5e6,
    "pocket_resnet3d": 0.150e6,
    "densenet3d": 8.1e6,
    "pocket_densenet3d": 0.241e6,
}


def meta_params(name: str, **overrides) -> int:
    with torch.device("meta"):
        return count_parameters(create_network(name, **overrides))


def small_input(name: str) -> torch.Tensor:
    """Smallest input of batch two (batch norm needs two) the network accepts, one divisor big."""
    if name == "lvnet":
        return torch.randn(2, 1, 16, 16, 16)
    if name.endswith("3d"):
        return torch.randn(2, 1, 5, 16, 16)
    return torch.randn(2, 1, 32, 32)


def test_registry_names_are_the_contract():
    assert network_names() == EXPECTED_NAMES


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_forward_backward_shape(name):
    model = create_network(name)
    model.train()
    x = small_input(name)
    out = model(x)
    if name == "lvnet":
        logits, aux = out
        assert len(aux) == 4
        for head in aux:
            assert head.shape == logits.shape
        loss = logits.mean() + sum(head.mean() for head in aux)
    else:
        logits = out
        loss = logits.mean()
    assert logits.shape == (x.shape[0], 2, *x.shape[2:])
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    # the first layer is reached by the gradient: the whole path is connected
    first = next(p for p in model.parameters() if p.dim() > 1)
    assert first.grad.abs().sum() > 0


def test_lvnet_eval_returns_logits_only():
    model = create_network("lvnet").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 16, 16, 16))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 2, 16, 16, 16)
    model.train()
    assert isinstance(
        create_network("lvnet", deep_supervision=False).train()(torch.randn(2, 1, 16, 16, 16)), torch.Tensor
    )


@pytest.mark.parametrize("name,reference", sorted(TABLE_1.items()))
def test_table_1_parameter_counts_within_5_percent(name, reference):
    assert abs(meta_params(name) / reference - 1) < 0.05


def test_exact_pocketnet_counts():
    # Locked so that a change of the architecture shows up here (docs/networks.md table).
    expected = {
        "pocket_unet3d": 150_066,
        "unet3d": 5_470_850,
        "pocket_densenet3d": 241_282,
        "densenet3d": 8_127_266,
        "pocket_unet2d": 53_010,
        "unet2d": 1_940_834,
        "pocket_densenet2d": 88_642,
        "densenet2d": 3_030_242,
    }
    for name, count in expected.items():
        assert meta_params(name) == count, name


@pytest.mark.parametrize("dims", ["2d", "3d"])
@pytest.mark.parametrize("block", ["unet", "resnet", "densenet"])
def test_pocket_is_about_3_percent_of_full(block, dims):
    ratio = meta_params(f"pocket_{block}{dims}") / meta_params(f"{block}{dims}")
    assert 0.02 < ratio < 0.031  # paper: 2.7-3.0 %


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_resnet_has_unet_parameter_count(dims):
    # Tables 1 and 2 list identical counts for ResNet and U-Net
    assert meta_params(f"resnet{dims}") == meta_params(f"unet{dims}")
    assert meta_params(f"pocket_resnet{dims}") == meta_params(f"pocket_unet{dims}")


def test_resnet_block_adds_after_first_conv():
    block = ResNetBlock(2, 3, 4, "none", "relu")
    nn.init.zeros_(block.conv2[0].weight)
    nn.init.zeros_(block.conv2[0].bias)
    x = torch.randn(1, 3, 8, 8)
    # conv2 == 0 -> relu(0) == 0, so the block returns its first convolution's output
    assert torch.allclose(block(x), block.conv1(x))


def test_densenet_block_concatenates():
    block = DenseNetBlock(3, 5, 16, "none", "relu")
    assert block.conv2[0].in_channels == 5 + 16
    assert block.pointwise[0].in_channels == 5 + 32
    assert block.pointwise[0].kernel_size == (1, 1, 1)


def test_irb_table_1_exact_weight_count():
    irb = InvertedResidualBlock(3, channels=64, expansion=4, kernel_size=5)
    conv_weights = sum(m.weight.numel() for m in irb.modules() if isinstance(m, nn.Conv3d))
    assert conv_weights == 5**3 * 64 * 4 + 2 * 64**2 * 4 == 64_768
    assert all(m.bias is None for m in irb.modules() if isinstance(m, nn.Conv3d))
    vanilla = nn.Conv3d(64, 64, 5, bias=False)
    assert vanilla.weight.numel() == 512_000
    assert round(100 * conv_weights / 512_000, 2) == 12.65  # the paper's percentage
    x = torch.randn(2, 64, 4, 4, 4)
    assert irb(x).shape == x.shape


def test_lvnet_table_3_params_and_flops():
    params = meta_params("lvnet")
    assert abs(params / 1_659_282 - 1) < 0.05
    flops = count_flops("lvnet")  # torch: 2 per multiply-accumulate
    gmacs = flops / 2e9
    assert abs(gmacs / 58.07 - 1) < 0.15  # the paper counts multiply-accumulates


def test_lvnet_down_and_up_sampling_weights_match_paper():
    model = LVNet()
    for down in model.down:
        conv = down.pointwise[0]
        assert conv.weight.numel() == 2 * conv.in_channels**2  # 2C^2
    for up in model.up:
        conv = up.pointwise[0]
        assert conv.weight.numel() == conv.in_channels**2 // 2  # C^2/2


def test_spatial_divisor():
    assert create_network("pocket_unet3d").spatial_divisor == (1, 16, 16)
    assert create_network("unet2d").spatial_divisor == (16, 16)
    assert create_network("lvnet").spatial_divisor == (16, 16, 16)
    assert create_network("pocket_unet3d", pool_size=2, depth=3).spatial_divisor == (8, 8, 8)
    assert create_network("pocket_unet3d", pool_size=(1, 2, 2), depth=2).spatial_divisor == (1, 4, 4)


def test_overrides_and_norms():
    base = meta_params("pocket_unet3d")
    batch = create_network("pocket_unet3d", norm="batch", in_channels=2, num_classes=3)
    assert count_parameters(batch) > base
    assert batch(torch.randn(2, 2, 5, 16, 16)).shape == (2, 3, 5, 16, 16)
    instance = create_network("pocket_densenet2d", norm="instance", activation="elu", init_filters=8, depth=2)
    assert instance(torch.randn(1, 1, 8, 12)).shape == (1, 2, 8, 12)
    assert any(isinstance(m, nn.InstanceNorm2d) for m in instance.modules())
    assert any(isinstance(m, nn.ELU) for m in instance.modules())
    full = create_network("unet3d", init_filters=4, depth=2)
    assert isinstance(full, PocketNet) and full.widths == [4, 8, 16]
    assert network_arguments("pocket_unet3d")["norm"] == "none"
    assert network_arguments("lvnet")["expansion"] == 4
    lv2d = create_network(
        "lvnet", spatial_dims=2, widths=(8, 16, 32), encoder_blocks=(1, 1, 1), decoder_blocks=(1, 1)
    )
    assert lv2d.spatial_divisor == (4, 4)
    logits, aux = lv2d.train()(torch.randn(2, 1, 8, 12))
    assert logits.shape == (2, 2, 8, 12) and [a.shape for a in aux] == [logits.shape] * 2


def test_paper_defaults_have_relu_and_no_norm():
    model = create_network("pocket_resnet3d")
    kinds = {type(m) for m in model.modules()}
    assert nn.ReLU in kinds
    assert not kinds & {nn.BatchNorm3d, nn.InstanceNorm3d}
    lv = create_network("lvnet")
    kinds = {type(m) for m in lv.modules()}
    assert nn.ELU in kinds and nn.BatchNorm3d in kinds and nn.ReLU not in kinds


@pytest.mark.parametrize(
    "name,overrides,fragment",
    [
        ("pocket_unet4d", {}, "unknown network name 'pocket_unet4d'"),
        ("pocket_unet3d", {"depht": 3}, "depht"),
        ("pocket_unet3d", {"depth": 0}, "depth"),
        ("pocket_unet3d", {"norm": "group"}, "norm"),
        ("pocket_unet3d", {"activation": "swish"}, "activation"),
        ("pocket_unet3d", {"pool_size": (2, 2)}, "pool_size"),
        ("pocket_unet3d", {"in_channels": 0}, "in_channels"),
        ("lvnet", {"decoder_blocks": (1, 1)}, "decoder_blocks"),
        ("lvnet", {"kernel_size": 4}, "kernel_size"),
    ],
)
def test_bad_arguments_name_the_problem(name, overrides, fragment):
    with pytest.raises(NetworkConfigError, match=fragment):
        create_network(name, **overrides)


def test_unknown_name_suggests():
    with pytest.raises(NetworkConfigError, match="Did you mean pocket_unet3d"):
        create_network("pocket_unet_3d")


def test_input_not_divisible_is_a_clear_error():
    model = create_network("pocket_unet3d")
    with pytest.raises(
        NetworkConfigError, match=r"not a multiple of the network's spatial_divisor \(1, 16, 16\)"
    ):
        model(torch.randn(1, 1, 5, 24, 32))
    with pytest.raises(NetworkConfigError, match="lower `depth`"):
        create_network("pocket_unet2d", depth=6)(torch.randn(1, 1, 32, 32))
    with pytest.raises(NetworkConfigError, match="in_channels=1"):
        model(torch.randn(1, 3, 5, 16, 16))
    with pytest.raises(NetworkConfigError, match="expected input of shape"):
        model(torch.randn(1, 1, 16, 16))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_instance_norm_keeps_channels_last_and_torchs_values_in_cpu_inference(spatial_dims):
    """The networks' instance norm: a channels-last input gives a channels-last output (torch's
    own returned the plain layout, and every next convolution converted it back), with torch's
    values to float rounding; training and the plain layout run torch's own."""
    from pocketseg_core.networks.blocks import make_norm

    torch.manual_seed(0)
    norm = make_norm("instance", spatial_dims, 8)
    assert isinstance(norm, nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    layout = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    shape = (3, 8, 20, 24) if spatial_dims == 2 else (3, 8, 10, 12, 14)
    x = (torch.randn(shape) * 3.0 + 2.0).contiguous(memory_format=layout)
    reference = nn.functional.instance_norm(x.double(), weight=norm.weight.double(), bias=norm.bias.double())
    norm.eval()
    with torch.inference_mode():
        out = norm(x)
        plain = norm(x.contiguous())
    assert out.is_contiguous(memory_format=layout) and not out.is_contiguous()
    assert torch.allclose(out.double(), reference, atol=2e-5, rtol=0)
    assert torch.equal(plain, nn.functional.instance_norm(x.contiguous(), weight=norm.weight, bias=norm.bias))
    norm.train()
    assert torch.allclose(norm(x).double(), reference, atol=2e-5, rtol=0)
