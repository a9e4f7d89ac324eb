"""D3SR / DFOSD method terms: Eq. 1-4 and 8 by hand, and which parameters train."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from method_step import generator_step
from torch import nn

from osdsr import complexity
from osdsr.cli import main
from osdsr.commands.train import load_run_config
from osdsr.losses.edges import sobel_magnitude
from osdsr.losses.lattice import lattice_loss
from osdsr.methods.d3sr import D3SRMethod
from osdsr.models import nad_discriminator
from osdsr.models.sd_generator import upsample_lr
from osdsr.train import gradients_off, step_generator

TINY_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "d3sr-tiny.yaml"
CPU = torch.device("cpu")


def method(*overrides: str) -> D3SRMethod:
    return D3SRMethod(load_run_config(TINY_CONFIG, list(overrides)))


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    return {"lr": torch.rand(2, 3, 8, 8, generator=rng), "hr": torch.rand(2, 3, 32, 32, generator=rng)}


class RecordingDiscriminator(nn.Module):
    """Logit ``real_logit`` for inputs equal to ``real``, else ``fake_logit``; records what it saw."""

    def __init__(self, real: torch.Tensor, real_logit: float, fake_logit: float) -> None:
        super().__init__()
        self.real, self.real_logit, self.fake_logit = real, real_logit, fake_logit
        self.bias = nn.Parameter(torch.zeros(()))  # keeps the output differentiable
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, z: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        self.seen.append((z.detach().clone(), t))
        logit = self.real_logit if torch.equal(z, self.real) else self.fake_logit
        return z.mean(dim=1, keepdim=True) * 0 + logit + self.bias


def test_spatial_terms_are_eq8_with_the_edge_term() -> None:
    d3sr = method("loss.mse_weight=0.7", "loss.edge_weight=0.3", "discriminator.kind=none")
    data = batch()
    terms, cache = generator_step(d3sr, data, d3sr.generator, None, step_generator(0, 0, 0, CPU))
    with torch.no_grad():
        z_hr, x_hr = d3sr.generator(upsample_lr(data["lr"]))
        x_pred = (x_hr + 1) / 2
    assert set(terms) == {"mse", "edge"}
    torch.testing.assert_close(terms["mse"], 0.7 * ((x_pred - data["hr"]) ** 2).mean())
    expected_edge = 0.3 * (sobel_magnitude(x_pred) - sobel_magnitude(data["hr"])).abs().mean()
    torch.testing.assert_close(terms["edge"], expected_edge)
    torch.testing.assert_close(cache["z_hr_pred"], z_hr)


def test_the_lattice_term_uses_the_latent_grid_period() -> None:
    d3sr = method("loss.lattice_weight=2.0", "loss.edge_weight=0", "discriminator.kind=none")
    data = batch()
    terms, _ = generator_step(d3sr, data, d3sr.generator, None, step_generator(0, 0, 0, CPU))
    with torch.no_grad():
        x_pred = (d3sr.generator(upsample_lr(data["lr"]))[1] + 1) / 2
    stride = d3sr.generator.latent_stride
    assert d3sr.perceptual is None and set(terms) == {"mse", "lattice"}
    torch.testing.assert_close(terms["lattice"], 2.0 * lattice_loss(x_pred, data["hr"], period=stride))


@pytest.mark.parametrize(
    ("adversarial", "generator_term", "discriminator_term"),
    [
        # D3SR Eq. 2: -log sigmoid(-0.5) = log(1 + e^0.5); Eq. 3: -log(1 - sigmoid(-0.5)) - log sigmoid(1)
        ("nonsaturating", math.log(1 + math.exp(0.5)), math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(-1))),
        ("hinge", 0.5, max(0.0, 1 - 0.5) + max(0.0, 1 - 1.0)),  # TAD-SR Eq. 11-12
    ],
)
def test_adversarial_terms_eq2_eq3_at_t0(adversarial: str, generator_term: float, discriminator_term: float) -> None:
    """With T = 0 the discriminator sees the clean latents (Eq. 4 at t = 0): fake z_H, real E(x_HR)."""
    d3sr = method(f"loss.adversarial={adversarial}", "loss.adversarial_weight=0.25", "discriminator.max_timestep=0")
    data = batch()
    with torch.no_grad():
        z_real = d3sr.generator.encode(data["hr"] * 2 - 1)
    judge = RecordingDiscriminator(z_real, real_logit=1.0, fake_logit=-0.5)
    rng = step_generator(0, 0, 0, CPU)
    terms, cache = generator_step(d3sr, data, d3sr.generator, judge, rng)
    assert terms["adversarial"].item() == pytest.approx(0.25 * generator_term, abs=1e-6)
    d_terms = d3sr.discriminator_losses(data, cache, judge, rng)
    assert d_terms["adversarial"].item() == pytest.approx(discriminator_term, abs=1e-6)
    (fake_g, t_g), (real, t_real), (fake_d, t_fake) = judge.seen
    assert torch.equal(fake_g, cache["z_hr_pred"]) and torch.equal(fake_d, cache["z_hr_pred"])
    assert torch.equal(real, z_real)
    assert all(t.tolist() == [0, 0] for t in (t_g, t_real, t_fake))


def test_discriminator_steps_cover_0_to_T_as_unet_indices() -> None:
    d3sr = method("discriminator.max_timestep=3")
    data = batch()
    with torch.no_grad():
        z_real = d3sr.generator.encode(data["hr"] * 2 - 1)
    judge = RecordingDiscriminator(z_real, 0.0, 0.0)
    _, cache = generator_step(d3sr, data, d3sr.generator, judge, step_generator(0, 0, 0, CPU))
    for step in range(40):
        d3sr.discriminator_losses(data, cache, judge, step_generator(0, step, 0, CPU))
    indices = torch.cat([t for _, t in judge.seen]).unique().tolist()
    assert indices == [0, 1, 2]  # steps 0..3 -> UNet indices max(t - 1, 0)
    clean = [z for z, t in judge.seen[1::2] if (t == 0).all() and torch.equal(z, z_real)]
    assert clean  # step 0 passes the real latent through unchanged


def test_pixel_cnn_judges_images() -> None:
    d3sr = method("discriminator.kind=cnn")
    data = batch()
    judge = RecordingDiscriminator(data["hr"] * 2 - 1, 1.0, -1.0)
    rng = step_generator(0, 0, 0, CPU)
    _, cache = generator_step(d3sr, data, d3sr.generator, judge, rng)
    d3sr.discriminator_losses(data, cache, judge, rng)
    assert [tuple(z.shape) for z, _ in judge.seen] == [(2, 3, 32, 32)] * 3
    assert all(t is None for _, t in judge.seen)
    assert d3sr.discriminator(torch.zeros(1, 3, 32, 32)).shape[1] == 1


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


@pytest.mark.parametrize("variant", ["d3sr", "dfosd"])
def test_only_lora_head_and_learnable_prompt_train(variant: str, tiny_sd_folder: Path) -> None:
    """One full step: the frozen base of the generator (UNet, VAE) and of the NAD get no grad and stay put."""
    learnable = variant == "dfosd"
    d3sr = method(
        f"method={variant}",
        f"generator.pretrained={tiny_sd_folder}",
        "generator.lora={rank: 4, alpha: 4}",
        f"generator.prompt_embedding={'learnable' if learnable else 'fixed'}",
        "discriminator.kind=sd21",
        f"discriminator.pretrained={tiny_sd_folder}",
        "discriminator.lora={rank: 4, alpha: 4}",
        f"discriminator.prompt_embedding={'learnable' if learnable else 'fixed'}",
        "discriminator.channels=8",
        "loss.adversarial_weight=1.0",
    )
    generator, discriminator = d3sr.generator, d3sr.discriminator
    g_trainable = {n for n, p in generator.named_parameters() if p.requires_grad}
    d_trainable = {n for n, p in discriminator.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n == "prompt_embedding" for n in g_trainable)
    assert ("prompt_embedding" in g_trainable) == learnable
    assert all("lora_" in n or n.startswith(("head.", "null_")) for n in d_trainable)
    assert ("null_prompt" in d_trainable) == learnable
    g_before, d_before = snapshot(generator), snapshot(discriminator)
    optimizers = d3sr.optimizers(generator, discriminator)
    data = batch()
    rng = step_generator(0, 0, 0, CPU)

    terms, cache = generator_step(d3sr, data, generator, discriminator, rng)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in discriminator.parameters())  # the generator step leaves D alone
    assert {n for n, p in discriminator.named_parameters() if p.requires_grad} == d_trainable
    g_params = dict(generator.named_parameters())
    assert all(g_params[n].grad is None for n in g_params if n not in g_trainable)
    assert any(g_params[n].grad is not None and g_params[n].grad.abs().sum() > 0 for n in g_trainable)
    optimizers["generator"].step()
    optimizers["generator"].zero_grad()

    sum(d3sr.discriminator_losses(data, cache, discriminator, rng).values()).backward()
    d_params = dict(discriminator.named_parameters())
    assert all(d_params[n].grad is None for n in d_params if n not in d_trainable)
    optimizers["discriminator"].step()

    parts = {"generator": (generator, g_before, g_trainable), "discriminator": (discriminator, d_before, d_trainable)}
    changed = {}
    for name, (module, before, trainable) in parts.items():
        after = dict(module.named_parameters())
        assert all(torch.equal(after[n], value) for n, value in before.items() if n not in trainable)
        changed[name] = {n for n in trainable if not torch.equal(after[n], before[n])}
        assert any("lora_B" in n for n in changed[name])
    assert {n for n in d_trainable if n.startswith("head.")} <= changed["discriminator"]
    assert ("prompt_embedding" in changed["generator"]) == learnable
    assert ("null_prompt" in changed["discriminator"]) == learnable


def test_max_timestep_beyond_the_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match=r"max_timestep 1001 must be in \[0, 1000\]"):
        method("discriminator.max_timestep=1001")


def test_missing_generator_base_folder_says_how_to_set_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--set generator.pretrained=DIR"):
        method(f"generator.pretrained={tmp_path / 'stable-diffusion-2-1-base'}")


def test_complexity_train_reports_both_nads_apart(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``osdsr complexity d3sr --train`` adds the SD-2.1 and SDXL discriminators, outside the generator total."""
    def tiny_parts(size: int) -> dict:
        with torch.device("meta"):
            conv = nn.Conv2d(3, 4, 1)
        return {"net": (conv, lambda: (torch.zeros(1, 3, size, size, device="meta"),))}

    kinds = []

    def recording_parts(config: object, size: int) -> dict:
        kinds.append(config)
        return tiny_parts(size)

    monkeypatch.setitem(complexity.COMPLEXITY_BUILDERS, "d3sr", tiny_parts)
    monkeypatch.setattr(nad_discriminator, "nad_complexity_parts", recording_parts)
    assert main(["complexity", "d3sr", "--size", "8", "--train", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [(c.kind, c.channels) for c in kinds] == [("sd21", 512), ("sdxl", 512)]
    assert set(data["training_only"]) == {"discriminator sd21 (NAD)", "discriminator sdxl (NAD)"}
    assert data["total"]["params"] == 16  # the generator's total leaves the discriminators out
    assert main(["complexity", "d3sr", "--size", "8", "--json"]) == 0
    assert "training_only" not in json.loads(capsys.readouterr().out)


def test_gradient_checkpointing_gives_the_same_generator_step(tiny_sd_folder: Path) -> None:
    """UNet, VAE decoder and NAD checkpointed: the generator step (which freezes the NAD's weights for its
    forward and backward) gives the same gradients as without."""
    overrides = [
        f"generator.pretrained={tiny_sd_folder}",
        "generator.lora={rank: 4, alpha: 4}",
        "discriminator.kind=sd21",
        f"discriminator.pretrained={tiny_sd_folder}",
        "discriminator.lora={rank: 4, alpha: 4}",
        "discriminator.channels=8",
        "loss.adversarial_weight=1.0",
    ]
    gradients = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        d3sr = method(*overrides, f"trainer.gradient_checkpointing={str(checkpointing).lower()}")
        for name, p in [*d3sr.generator.named_parameters(), *d3sr.discriminator.named_parameters()]:
            if "lora_B" in name:  # LoRA B starts at zero: make every adapter matter
                torch.nn.init.normal_(p, std=0.1)
        rng = torch.Generator().manual_seed(0)
        outputs = d3sr.generator_outputs(batch(), d3sr.generator, rng)
        with gradients_off([p for p in d3sr.discriminator.parameters() if p.requires_grad]):  # as the trainer does
            terms = d3sr.generator_losses(batch(), outputs, d3sr.discriminator, rng)
            sum(terms.values()).backward()
        gradients[checkpointing] = {n: p.grad for n, p in d3sr.generator.named_parameters() if p.grad is not None}
    assert d3sr.generator.unet.is_gradient_checkpointing and d3sr.generator.autoencoder.decoder.gradient_checkpointing
    assert d3sr.discriminator.encoder.gradient_checkpointing
    assert gradients[False] and gradients[False].keys() == gradients[True].keys()
    for name, gradient in gradients[False].items():
        torch.testing.assert_close(gradients[True][name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_strength_weighs_ground_truth_by_1_minus_s_and_the_teacher_by_s() -> None:
    """Per image b: (1 - s_b) * term(x_b, HR_b) + teacher_weight * s_b * term(x_b, teacher_b), batch mean;
    each image is generated at the timestep of its own strength."""
    d3sr = method(
        "generator.strength_timesteps=[50, 200]", "loss.teacher_weight=2.0", "loss.edge_weight=0.1",
        "loss.lattice_weight=3.0", "discriminator.kind=none",
    )
    data = {**batch(), "teacher": torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))}
    rng = step_generator(0, 0, 0, CPU)
    strength = d3sr._strengths(2, step_generator(0, 0, 0, CPU))
    terms, cache = generator_step(d3sr, data, d3sr.generator, None, rng)
    torch.testing.assert_close(cache["strength"], strength)
    with torch.no_grad():
        x_pred = (d3sr.generator(upsample_lr(data["lr"]), strength)[1] + 1) / 2
    stride = d3sr.generator.latent_stride

    def per_image(target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "mse": ((x_pred - target) ** 2).flatten(1).mean(1),
            "edge": 0.1 * (sobel_magnitude(x_pred) - sobel_magnitude(target)).abs().flatten(1).mean(1),
            "lattice": 3.0 * torch.stack([lattice_loss(x_pred[b : b + 1], target[b : b + 1], stride) for b in range(2)]),
        }

    assert set(terms) == {"mse", "edge", "lattice", "teacher_mse", "teacher_edge", "teacher_lattice"}
    for name, value in per_image(data["hr"]).items():
        torch.testing.assert_close(terms[name], ((1 - strength) * value).mean())
    for name, value in per_image(data["teacher"]).items():
        torch.testing.assert_close(terms[f"teacher_{name}"], (2.0 * strength * value).mean())
    timesteps = d3sr.generator.timesteps(4, torch.tensor([0.0, 0.5, 1.0, 0.25]), CPU)
    assert timesteps.tolist() == [50, 125, 200, 88]  # round(50 + s * 150)


class PerImageDiscriminator(nn.Module):
    """Image b of the batch gets the logit ``logits[b]`` on every patch (and a second head of 2x it)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, image: torch.Tensor, t: torch.Tensor | None) -> list[torch.Tensor]:
        head = image[:, :1, :4, :4] * 0 + self.logits.view(-1, 1, 1, 1) + self.bias
        return [head, 2 * head]


def test_with_a_strength_control_the_adversarial_term_of_image_b_is_weighted_by_s_b() -> None:
    """The fidelity end (s = 0) gets no adversarial gradient: per image s_b * Eq. 2, batch mean."""
    d3sr = method(
        "generator.strength_timesteps=[50, 200]", "loss.adversarial_weight=0.5", "discriminator.kind=cnn",
        "loss.edge_weight=0",
    )
    judge = PerImageDiscriminator([-0.5, 1.5])
    terms, cache = generator_step(d3sr, batch(), d3sr.generator, judge, step_generator(0, 0, 0, CPU))
    s = cache["strength"]
    eq2 = torch.tensor([math.log(1 + math.exp(0.5)) + math.log(1 + math.exp(1.0)),  # softplus(-l) + softplus(-2l)
                        math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(-3.0))])
    torch.testing.assert_close(terms["adversarial"], 0.5 * (s * eq2).mean())


def test_strengths_hit_both_ends_and_the_range_between() -> None:
    d3sr = method("generator.strength_timesteps=[50, 200]", "discriminator.kind=none")
    drawn = torch.cat([d3sr._strengths(64, step_generator(0, k, 0, CPU)) for k in range(4)])
    ends = (drawn == 0) | (drawn == 1)
    assert 0.35 < ends.float().mean() < 0.65 and (drawn == 0).any() and (drawn == 1).any()
    assert ((drawn[~ends] > 0) & (drawn[~ends] < 1)).all()
    assert method("discriminator.kind=none")._strengths(4, step_generator(0, 0, 0, CPU)) is None


def test_teacher_weight_without_teacher_outputs_says_what_to_set() -> None:
    d3sr = method("loss.teacher_weight=1.0", "discriminator.kind=none")
    with pytest.raises(ValueError, match="data.teacher"):
        generator_step(d3sr, batch(), d3sr.generator, None, step_generator(0, 0, 0, CPU))


def test_a_model_without_strength_control_refuses_a_strength() -> None:
    generator = method("discriminator.kind=none").generator
    with pytest.raises(ValueError, match="no strength control"):
        generator.timesteps(1, 0.5, CPU)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        method("generator.strength_timesteps=[50, 200]", "discriminator.kind=none").generator.timesteps(1, 1.5, CPU)
