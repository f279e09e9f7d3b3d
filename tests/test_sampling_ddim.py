"""The functional DDIM scheduler against diffusers' torch ``DDIMScheduler`` (X-Dyna's config, spec §1.5)."""
from __future__ import annotations

import numpy as np
import pytest

from xdyna_jax.sampling import add_noise, ddim_step, make_schedule

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def _diffusers(steps, prediction_type="epsilon"):
    s = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="linear", steps_offset=1, clip_sample=False, set_alpha_to_one=True,
                                prediction_type=prediction_type)
    s.set_timesteps(steps)
    return s


@pytest.mark.parametrize("steps", [25, 7, 50])
def test_timesteps_and_alphas_match_diffusers(steps):
    ref = _diffusers(steps)
    ours = make_schedule(steps)
    np.testing.assert_array_equal(np.asarray(ours.timesteps), ref.timesteps.numpy())
    np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), rtol=1e-6)
    assert float(ours.final_alpha_cumprod) == 1.0


def test_x_dyna_timesteps_and_constants():
    s = make_schedule(25)  # spec §1.5, printed from diffusers 0.24
    assert np.asarray(s.timesteps).tolist() == list(range(961, 0, -40))
    a = np.asarray(s.alphas_cumprod)
    assert abs(a[961] - 0.0024783) < 5e-7 and abs(a[1] - 0.998290) < 5e-6


@pytest.mark.parametrize("steps,prediction_type", [(25, "epsilon"), (7, "epsilon"), (25, "v_prediction")])
def test_every_step_matches_diffusers(steps, prediction_type):
    ref = _diffusers(steps, prediction_type)
    ours = make_schedule(steps)
    rng = np.random.default_rng(steps)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    x_ref = torch.from_numpy(x.copy())
    for i, t in enumerate(ref.timesteps):
        eps = rng.standard_normal(x.shape).astype(np.float32)  # the model's output: the noise, or v
        x_ref = ref.step(torch.from_numpy(eps), t, x_ref, eta=0.0).prev_sample
        x = np.asarray(ddim_step(ours, i, x, eps, prediction_type))
        # x0 divides by sqrt(alpha-bar) ~ 0.05 at the first step: compare relative to the magnitude
        scale = max(1.0, float(np.abs(x_ref.numpy()).max()))
        np.testing.assert_allclose(x, x_ref.numpy(), rtol=0, atol=2e-6 * scale, err_msg=f"step {i} (t={int(t)})")
    # the last step lands on alpha-bar = 1: x_prev is the x0 prediction itself
    assert int(ours.prev_timesteps[-1]) < 0


def test_add_noise_matches_diffusers():
    ref = _diffusers(25)
    ours = make_schedule(25)
    rng = np.random.default_rng(0)
    x0, noise = rng.standard_normal((2, 2, 4, 4, 4)).astype(np.float32)
    for t in (961, 500, 1):
        want = ref.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), torch.tensor([t])).numpy()
        # near t = 1, sqrt(1 - a) magnifies the 2e-7 alpha-bar difference (float64 product vs torch's float32)
        np.testing.assert_allclose(np.asarray(add_noise(ours, x0, noise, t)), want, rtol=0, atol=5e-6)


def test_bad_step_counts_raise():
    with pytest.raises(ValueError, match="steps"):
        make_schedule(0)
    with pytest.raises(ValueError, match="beta_schedule"):
        make_schedule(25, beta_schedule="cosine")


@pytest.mark.parametrize("steps,strength,kept", [(25, 1.0, 25), (25, 0.6, 15), (25, 0.7, 17), (10, 0.05, None)])
def test_strength_keeps_the_official_tail_of_timesteps(steps, strength, kept):
    """The official ``get_timesteps``: keep ``int(steps * strength)`` steps, the last ones of the full list."""
    if kept is None:
        with pytest.raises(ValueError, match="strength"):
            make_schedule(steps, strength=strength)
        return
    ref = _diffusers(steps)
    ours = make_schedule(steps, strength=strength)
    want = ref.timesteps.numpy()[steps - kept:]
    np.testing.assert_array_equal(np.asarray(ours.timesteps), want)
    np.testing.assert_array_equal(np.asarray(ours.prev_timesteps), want - 1000 // steps)
    if (steps, strength) == (25, 0.6):  # by hand: 561, 521, ..., 1
        assert np.asarray(ours.timesteps).tolist() == list(range(561, 0, -40))
    # every kept step is the full schedule's step at the same timestep
    full = make_schedule(steps)
    rng = np.random.default_rng(1)
    x, eps = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(ddim_step(ours, 0, x, eps)),
                                  np.asarray(ddim_step(full, steps - kept, x, eps)))


def test_strength_out_of_range_raises():
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="strength"):
            make_schedule(25, strength=bad)


def test_unknown_prediction_type_is_a_named_error():
    with pytest.raises(ValueError, match="prediction_type"):
        ddim_step(make_schedule(5), 0, np.zeros((1, 2)), np.zeros((1, 2)), "sample")


@pytest.mark.parametrize("steps", [25, 10])
def test_zero_terminal_snr_and_trailing_spacing_match_diffusers(steps):
    """Lin et al. 2023's options: diffusers' ``rescale_betas_zero_snr`` and ``timestep_spacing="trailing"``."""
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                                  prediction_type="v_prediction", rescale_betas_zero_snr=True,
                                  timestep_spacing="trailing")
    ref.set_timesteps(steps)
    ours = make_schedule(steps, rescale_zero_snr=True, timestep_spacing="trailing")
    np.testing.assert_array_equal(np.asarray(ours.timesteps), ref.timesteps.numpy())
    np.testing.assert_allclose(np.asarray(ours.alphas_cumprod), ref.alphas_cumprod.numpy(), rtol=2e-5, atol=1e-9)
    assert float(ours.alphas_cumprod[999]) == 0.0 and int(ours.timesteps[0]) == 999
    rng = np.random.default_rng(steps)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    x_ref = torch.from_numpy(x.copy())
    for i, t in enumerate(ref.timesteps):
        v = rng.standard_normal(x.shape).astype(np.float32)
        x_ref = ref.step(torch.from_numpy(v), t, x_ref, eta=0.0).prev_sample
        x = np.asarray(ddim_step(ours, i, x, v, "v_prediction"))
        np.testing.assert_allclose(x, x_ref.numpy(), atol=2e-5, err_msg=f"step {i} (t={int(t)})")


def test_unknown_spacing_is_a_named_error():
    with pytest.raises(ValueError, match="timestep_spacing"):
        make_schedule(25, timestep_spacing="linspace")
