"""The diffusion loss: gradient through the frozen UNet, empty batches, condition dropout, chunking, targets."""

import pytest
import torch

from train.diffusion_loss import DreamLLMDiffusionLoss, min_snr_weights


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def loss_fn(tiny_folder):
    return DreamLLMDiffusionLoss.from_pretrained(tiny_folder)


def _inputs(loss_fn, num_images=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    width = loss_fn.unet.config.cross_attention_dim
    resolution = loss_fn.unet.config.sample_size * 2 ** (len(loss_fn.vae.config.block_out_channels) - 1)
    condition = torch.randn(num_images, 8, width, generator=generator, requires_grad=True)
    targets = torch.rand(num_images, 3, resolution, resolution, generator=generator) * 2 - 1
    return condition, targets


def test_gradient_flows_through_the_frozen_unet(loss_fn):
    condition, targets = _inputs(loss_fn)
    loss = loss_fn(condition, targets)
    assert loss.dtype == torch.float32 and loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert condition.grad is not None and condition.grad.abs().sum() > 0
    decoder = list(loss_fn.unet.parameters()) + list(loss_fn.vae.parameters())
    assert all(not p.requires_grad and p.grad is None for p in decoder)


def test_no_creation_blocks_costs_no_decoder_work(loss_fn, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the decoder ran for a batch without creation blocks")

    monkeypatch.setattr(loss_fn.unet, "forward", forbidden)
    monkeypatch.setattr(loss_fn.vae, "encode", forbidden)
    anchor = torch.nn.Parameter(torch.randn(4, 4))
    loss = loss_fn(None, None, anchors=[anchor])
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert anchor.grad is not None and torch.equal(anchor.grad, torch.zeros_like(anchor))


def test_condition_dropout_uses_the_null_condition(loss_fn, monkeypatch):
    seen = []
    original = loss_fn._per_image_loss

    def spy(condition, *args):
        seen.append(condition.detach().clone())
        return original(condition, *args)

    monkeypatch.setattr(loss_fn, "_per_image_loss", spy)
    condition, targets = _inputs(loss_fn)
    null = torch.randn(1, *condition.shape[1:], requires_grad=True)
    loss_fn(condition, targets, null_condition=null, condition_drop_prob=1.0).backward()
    assert torch.equal(seen[-1], null.detach().expand_as(condition))
    assert null.grad is not None and null.grad.abs().sum() > 0  # the null branch is trained too
    loss_fn(condition, targets, null_condition=null, condition_drop_prob=0.0)
    assert torch.equal(seen[-1], condition.detach())
    with pytest.raises(ValueError, match="null condition"):
        loss_fn(condition, targets, condition_drop_prob=0.5)


def test_chunked_unet_batch_matches_one_batch(tiny_folder, loss_fn):
    chunked = DreamLLMDiffusionLoss.from_pretrained(tiny_folder, max_unet_batch=2)
    results = []
    for module in (loss_fn, chunked):
        condition, targets = _inputs(loss_fn, num_images=5)
        torch.manual_seed(7)
        loss = module(condition, targets)
        loss.backward()
        results.append((loss.detach(), condition.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-7)


def test_noising_targets_and_weights_are_the_schedulers_and_diffusers_own(tiny_folder, loss_fn, monkeypatch):
    import train.diffusion_loss as diffusion_loss
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    v_scheduler = DDPMScheduler.from_config(loss_fn.scheduler.config, prediction_type="v_prediction")
    v_loss = DreamLLMDiffusionLoss(loss_fn.unet, loss_fn.vae, v_scheduler, snr_gamma=5.0)
    calls = []
    for name in ("add_noise", "get_velocity"):
        original = getattr(v_scheduler, name)
        monkeypatch.setattr(v_scheduler, name, lambda *args, _f=original, _n=name: calls.append(_n) or _f(*args))
    monkeypatch.setattr(diffusion_loss, "compute_snr", lambda *args: calls.append("compute_snr") or compute_snr(*args))
    condition, targets = _inputs(loss_fn)
    assert torch.isfinite(v_loss(condition, targets))
    assert calls == ["add_noise", "get_velocity", "compute_snr"]
    timesteps = torch.arange(1000)
    weights = min_snr_weights(v_scheduler, timesteps, v_loss.snr_gamma, v_loss.prediction_type)
    snr = compute_snr(v_scheduler, timesteps)
    torch.testing.assert_close(weights, torch.minimum(snr, torch.full_like(snr, 5.0)) / (snr + 1))
    assert bool((weights > 0).all() and (weights <= 1).all())


def test_mismatched_conditions_and_targets_raise(loss_fn):
    condition, targets = _inputs(loss_fn, num_images=2)
    with pytest.raises(ValueError, match="2 creation blocks but 1"):
        loss_fn(condition, targets[:1])


def test_several_noise_draws_per_image_share_one_condition_and_one_encode(tiny_folder, monkeypatch):
    draws = 3
    loss_fn = DreamLLMDiffusionLoss.from_pretrained(tiny_folder, noise_samples_per_image=draws)
    condition, targets = _inputs(loss_fn, num_images=2)
    encodes, unet_inputs = [], []
    original_encode, original_loss = loss_fn.vae.encode, loss_fn._per_image_loss
    monkeypatch.setattr(loss_fn.vae, "encode", lambda x: encodes.append(len(x)) or original_encode(x))

    def spy(condition, noisy, timesteps, target):
        unet_inputs.append((condition.detach().clone(), timesteps.clone()))
        return original_loss(condition, noisy, timesteps, target)

    monkeypatch.setattr(loss_fn, "_per_image_loss", spy)
    torch.manual_seed(0)
    loss = loss_fn(condition, targets)
    assert encodes == [2]  # each target is encoded once
    (seen_condition, timesteps), = unet_inputs
    assert seen_condition.shape[0] == 2 * draws and timesteps.shape == (2 * draws,)
    assert torch.equal(seen_condition[:draws], condition[:1].detach().expand(draws, -1, -1))
    assert torch.equal(seen_condition[draws:], condition[1:].detach().expand(draws, -1, -1))
    loss.backward()
    assert condition.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="noise_samples_per_image must be >= 1, got 0"):
        DreamLLMDiffusionLoss.from_pretrained(tiny_folder, noise_samples_per_image=0)


def test_min_timestep_limits_the_drawn_timesteps(tiny_folder, monkeypatch):
    loss_fn = DreamLLMDiffusionLoss.from_pretrained(tiny_folder, min_timestep=900, noise_samples_per_image=16)
    condition, targets = _inputs(loss_fn, num_images=2)
    seen = []
    original_loss = loss_fn._per_image_loss
    monkeypatch.setattr(loss_fn, "_per_image_loss", lambda c, x, t, y: seen.append(t.clone()) or original_loss(c, x, t, y))
    loss_fn(condition, targets).backward()
    (timesteps,) = seen
    assert timesteps.min() >= 900 and timesteps.max() < loss_fn.num_train_timesteps
    assert len(timesteps.unique()) > 1  # still drawn, not pinned
    assert condition.grad.abs().sum() > 0
    total = loss_fn.num_train_timesteps
    for bad in (-1, total):
        with pytest.raises(ValueError, match=rf"min_timestep must be in \[0, {total}\), got {bad}"):
            DreamLLMDiffusionLoss.from_pretrained(tiny_folder, min_timestep=bad)
