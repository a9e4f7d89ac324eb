"""Real-ESRGAN generators: official names and sizes, the ncnn graph mapping, the ncnn runtime, the SR contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from osdsr.inference import upscale_tensor
from osdsr.model_loading import LoadOptions, load_sr_model
from osdsr.models.realesrgan import RealESRGANConfig, RealESRGANSR, RRDBNet, SRVGGNetCompact, save_realesrgan_model
from osdsr.models.realesrgan_official import config_from_state_dict, from_ncnn
from osdsr.ncnn_format import read_ncnn_param, read_ncnn_weights
from realesrgan_files import compact_graph, randomise, rrdbnet_graph

# Parameter counts of the official releases (weights + biases (+ PReLU slopes) of their ncnn files)
X4PLUS_PARAMETERS = 16_697_987  # realesrgan-x4plus: RRDBNet 64 features, 23 blocks, growth 32
ANIMEVIDEO_V3_PARAMETERS = 621_424  # realesr-animevideov3-x4: SRVGGNetCompact 64 features, 16 convs


def _tiny(arch: str) -> RealESRGANSR:
    model = RealESRGANSR(RealESRGANConfig.tiny(arch))
    randomise(model.network)
    return model.eval()


def _write_ncnn(model: RealESRGANSR, folder: Path, fp16: bool = True) -> tuple[Path, Path]:
    graph = rrdbnet_graph(model.network, fp16) if model.config.arch == "rrdbnet" else compact_graph(model.network, fp16)
    param, weights = folder / "tiny.param", folder / "tiny.bin"
    graph.write(param, weights)
    return param, weights


def test_official_names_and_parameter_counts() -> None:
    with torch.device("meta"):
        x4plus, compact = RRDBNet(), SRVGGNetCompact(num_feat=64, num_conv=16)
    keys = set(x4plus.state_dict())
    assert {"conv_first.weight", "body.22.rdb3.conv5.bias", "conv_body.weight", "conv_up1.weight", "conv_up2.weight",
            "conv_hr.weight", "conv_last.bias"} <= keys
    assert sum(p.numel() for p in x4plus.parameters()) == X4PLUS_PARAMETERS
    assert {"body.0.weight", "body.1.weight", "body.34.bias"} <= set(compact.state_dict())
    assert compact.body[1].weight.shape == (64,)  # per-channel PReLU
    assert sum(p.numel() for p in compact.parameters()) == ANIMEVIDEO_V3_PARAMETERS


@pytest.mark.parametrize("arch", ["rrdbnet", "srvgg_compact"])
def test_config_follows_from_an_official_state_dict(arch: str) -> None:
    model = _tiny(arch)
    assert config_from_state_dict(model.network.state_dict(), "test") == model.config


@pytest.mark.parametrize("arch", ["rrdbnet", "srvgg_compact"])
@pytest.mark.parametrize("fp16", [True, False])
def test_ncnn_graph_maps_onto_the_same_weights(tmp_path: Path, arch: str, fp16: bool) -> None:
    model = _tiny(arch)
    param, weights = _write_ncnn(model, tmp_path, fp16)
    layers = read_ncnn_param(param)
    converted = from_ncnn(layers, read_ncnn_weights(layers, weights), str(param))
    assert converted.config == model.config
    expected = model.network.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in converted.network.state_dict().items())


def test_ncnn_runtime_computes_what_the_torch_network_computes(tmp_path: Path) -> None:
    """The test-written files run in the real ncnn runtime: the writer and the architecture agree."""
    ncnn = pytest.importorskip("ncnn")
    for arch in ("rrdbnet", "srvgg_compact"):
        model = _tiny(arch)
        param, weights = _write_ncnn(model, tmp_path)
        lr = np.ascontiguousarray(np.random.default_rng(0).random((3, 12, 10), dtype=np.float32))
        net = ncnn.Net()
        net.opt.use_vulkan_compute = False
        net.load_param(str(param))
        net.load_model(str(weights))
        extractor = net.create_extractor()
        extractor.input("data", ncnn.Mat(lr))
        _, out = extractor.extract("output")
        with torch.no_grad():
            ours = model.network(torch.from_numpy(lr)[None])[0].numpy()
        np.testing.assert_allclose(np.array(out), ours, atol=1e-4)


def test_ncnn_graphs_that_differ_are_refused_with_a_list(tmp_path: Path) -> None:
    model = _tiny("rrdbnet")
    param, weights = _write_ncnn(model, tmp_path)
    text = param.read_text()
    # conv5 of the first dense block with a fused LeakyReLU, and a bilinear instead of a nearest upsampling
    lines = text.splitlines()
    conv5 = [i for i, line in enumerate(lines) if line.startswith("Convolution")][5]
    lines[conv5] += " 9=2 -23310=1,2.000000e-01"
    interp = next(i for i, line in enumerate(lines) if line.startswith("Interp"))
    lines[interp] = lines[interp].replace("0=1", "0=2")
    param.write_text("\n".join(lines) + "\n")
    layers = read_ncnn_param(param)
    with pytest.raises(ValueError) as error:
        from_ncnn(layers, read_ncnn_weights(layers, weights), str(param))
    message = str(error.value)
    assert "body.0.rdb1.conv5): activation (2, (0.2,)), expected (0, ())" in message
    assert "1 x Interp (2, 2.0, 2.0), expected 0" in message


def test_a_bin_that_does_not_fit_its_param_is_refused(tmp_path: Path) -> None:
    param, weights = _write_ncnn(_tiny("srvgg_compact"), tmp_path)
    data = weights.read_bytes()
    weights.write_bytes(data[:-8])
    with pytest.raises(ValueError, match="ends at byte"):
        read_ncnn_weights(read_ncnn_param(param), weights)
    weights.write_bytes(data + b"\0" * 4)
    with pytest.raises(ValueError, match="4 bytes left"):
        read_ncnn_weights(read_ncnn_param(param), weights)


def test_saved_folder_loads_through_the_one_pipeline(tmp_path: Path) -> None:
    model = _tiny("rrdbnet")
    save_realesrgan_model(tmp_path / "model", model)
    loaded = load_sr_model(tmp_path / "model", LoadOptions())
    lr = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model.network(lr).clamp(0, 1)
    out = upscale_tensor(loaded, lr, color_fix="none")
    assert out.shape == (1, 3, 36, 44)
    torch.testing.assert_close(out, expected)
    rgba = torch.cat([lr, torch.ones(1, 1, 9, 11)], dim=1)
    assert upscale_tensor(loaded, rgba, color_fix="none")[:, 3].min() == 1.0  # alpha kept, upscaled apart
    bf16 = load_sr_model(tmp_path / "model", LoadOptions(dtype=torch.bfloat16))
    assert next(bf16.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(upscale_tensor(bf16, lr, color_fix="none", dtype=torch.bfloat16), expected, atol=0.1, rtol=0)
