"""VGG16 with torchvision's keys: layout, loading from .pth / .safetensors, stage features, L2 pooling."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from osdsr.models.vgg import VGG16, l2_pool, load_vgg16, read_state_dict, stage_features

# torchvision.models.vgg16().state_dict(): every key and shape, written out by hand.
TORCHVISION_VGG16_SHAPES = {
    "features.0.weight": (64, 3, 3, 3),
    "features.0.bias": (64,),
    "features.2.weight": (64, 64, 3, 3),
    "features.2.bias": (64,),
    "features.5.weight": (128, 64, 3, 3),
    "features.5.bias": (128,),
    "features.7.weight": (128, 128, 3, 3),
    "features.7.bias": (128,),
    "features.10.weight": (256, 128, 3, 3),
    "features.10.bias": (256,),
    "features.12.weight": (256, 256, 3, 3),
    "features.12.bias": (256,),
    "features.14.weight": (256, 256, 3, 3),
    "features.14.bias": (256,),
    "features.17.weight": (512, 256, 3, 3),
    "features.17.bias": (512,),
    "features.19.weight": (512, 512, 3, 3),
    "features.19.bias": (512,),
    "features.21.weight": (512, 512, 3, 3),
    "features.21.bias": (512,),
    "features.24.weight": (512, 512, 3, 3),
    "features.24.bias": (512,),
    "features.26.weight": (512, 512, 3, 3),
    "features.26.bias": (512,),
    "features.28.weight": (512, 512, 3, 3),
    "features.28.bias": (512,),
    "classifier.0.weight": (4096, 25088),
    "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096),
    "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}
TINY = 16  # width divisor of the test checkpoints: channels 4, 8, 16, 32, 32; classifier 256 wide
# ReLU indices of relu1_2 ... relu5_3 in torchvision's vgg16.features
TORCHVISION_STAGE_RELUS = (3, 8, 15, 22, 29)


def _tiny_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the same tensor in a VGG16 with every width divided by TINY (RGB and 1000 classes stay)."""
    return tuple(d if d in (3, 1000) else d // TINY for d in shape)


def _tiny_torchvision_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        key: 0.1 * torch.randn(_tiny_shape(shape), generator=generator)
        for key, shape in TORCHVISION_VGG16_SHAPES.items()
    }


def test_full_size_keys_and_shapes_are_torchvisions() -> None:
    with torch.device("meta"):
        model = VGG16()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == TORCHVISION_VGG16_SHAPES
    assert list(shapes) == list(TORCHVISION_VGG16_SHAPES)  # same order too
    assert sum(math.prod(s) for s in shapes.values()) == 138_357_544


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_keyed_checkpoint_loads_strictly(tmp_path, suffix: str) -> None:
    state = _tiny_torchvision_state()
    path = tmp_path / f"vgg16{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    model = load_vgg16(path, width_divisor=TINY)
    loaded = model.state_dict()
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key
        assert loaded[key].device.type == "cpu"
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 1000)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s},
        lambda s: {"params_ema": s},
        lambda s: {f"module.{k}": v for k, v in s.items()},
        lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
    ],
    ids=["state_dict", "model", "params_ema", "module-prefix", "nested"],
)
def test_common_wrappers_are_unwrapped(tmp_path, wrap) -> None:
    state = _tiny_torchvision_state()
    torch.save(wrap(state), tmp_path / "wrapped.pth")
    model = load_vgg16(tmp_path / "wrapped.pth", width_divisor=TINY)
    assert torch.equal(model.features[28].bias, state["features.28.bias"])


def test_mismatched_checkpoint_error_lists_missing_unexpected_and_shapes(tmp_path) -> None:
    state = _tiny_torchvision_state()
    del state["classifier.6.bias"]
    state["features.30.weight"] = torch.zeros(1)
    state["features.0.bias"] = torch.zeros(5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as info:
        load_vgg16(tmp_path / "bad.pth", width_divisor=TINY)
    message = str(info.value)
    assert "missing keys [classifier.6.bias]" in message
    assert "unexpected keys [features.30.weight]" in message
    assert "features.0.bias (5,) (expected (4,))" in message
    assert "torchvision vgg16" in message


def test_unreadable_files_fail_clearly(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="VGG16 weights file not found"):
        load_vgg16(tmp_path / "absent.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        read_state_dict(tmp_path / "list.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights_only=True"):
        read_state_dict(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        read_state_dict(tmp_path / "junk.safetensors")


def test_half_precision_checkpoint_loads_as_float32(tmp_path) -> None:
    state = {k: v.half() for k, v in _tiny_torchvision_state().items()}
    torch.save(state, tmp_path / "half.pth")
    model = load_vgg16(tmp_path / "half.pth", width_divisor=TINY)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.features[0].weight, state["features.0.weight"].float())


def test_width_divisor_must_divide_every_width() -> None:
    with pytest.raises(ValueError, match="width_divisor=3"):
        VGG16(3)


def test_max_pooled_stages_are_torchvisions_relu_outputs() -> None:
    model = VGG16(TINY)
    x = torch.rand(2, 3, 32, 32)
    stages = model.stage_features(x, pooling="max")
    assert [tuple(s.shape) for s in stages] == [
        (2, 4, 32, 32),
        (2, 8, 16, 16),
        (2, 16, 8, 8),
        (2, 32, 4, 4),
        (2, 32, 2, 2),
    ]
    for stage, relu_index in zip(stages, TORCHVISION_STAGE_RELUS):
        assert torch.allclose(stage, model.features[: relu_index + 1](x), atol=1e-6)


def test_l2_pooled_stages_replace_only_the_pooling() -> None:
    model = VGG16(TINY)
    x = torch.rand(1, 3, 32, 32)
    stages = stage_features(model.features, x, pooling="l2")
    # stage 1 precedes any pooling; stage 2 is the stage-2 convs applied to the L2-pooled stage 1
    assert torch.equal(stages[0], model.features[:4](x))
    assert torch.allclose(stages[1], model.features[5:9](l2_pool(stages[0])), atol=1e-6)
    assert not torch.allclose(stages[1], model.stage_features(x, pooling="max")[1])
    with pytest.raises(ValueError, match="pooling='avg'"):
        stage_features(model.features, x, pooling="avg")  # type: ignore[arg-type]


def test_l2_pool_of_a_constant_map_by_hand() -> None:
    # kernel = outer([1/4, 1/2, 1/4]) = [[1,2,1],[2,4,2],[1,2,1]] / 16, stride 2, zero padding 1.
    # Output (0,0) sees kernel rows/cols 1-2 inside the 4x4 map: (4+2+2+1)/16 = 9/16 of the weight;
    # (0,1) and (1,0) see 12/16; (1,1) sees the whole kernel. For a constant 2: sqrt(4 * fraction).
    x = torch.full((1, 2, 4, 4), 2.0)
    expected = torch.tensor([[1.5, math.sqrt(3.0)], [math.sqrt(3.0), 2.0]]).expand(1, 2, 2, 2)
    assert torch.allclose(l2_pool(x), expected, atol=1e-6)
