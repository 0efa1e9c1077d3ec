"""The CPU step table against diffusers' DDIMScheduler: same timesteps, same alphas, same σ."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from rtcore.schedule import DDIMConfig, alphas_cumprod, step_table

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
          set_alpha_to_one=False, steps_offset=1)
CONFIGS = [
    SD,
    dict(SD, timestep_spacing="trailing", prediction_type="v_prediction"),
    dict(SD, timestep_spacing="linspace"),
    dict(beta_schedule="linear", set_alpha_to_one=True, clip_sample=True),
    dict(beta_schedule="squaredcos_cap_v2", steps_offset=0),
    dict(SD, rescale_betas_zero_snr=True, timestep_spacing="trailing", set_alpha_to_one=True),
]


def _config_id(cfg):
    return f"{cfg.get('beta_schedule')}-{cfg.get('timestep_spacing', 'leading')}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=_config_id)
@pytest.mark.parametrize("steps,strength", [(1, 1.0), (7, 0.6), (50, 0.8), (50, 1.0), (1000, 0.3)])
def test_table_matches_diffusers(cfg, steps, strength):
    ref = DDIMScheduler(**cfg)
    ref.set_timesteps(steps)
    ours = DDIMConfig.from_dict(cfg)
    np.testing.assert_array_equal(alphas_cumprod(ours), ref.alphas_cumprod.numpy().astype(np.float64))

    eta = 0.3
    table = step_table(ours, steps, strength, eta)
    k = int(steps * strength)
    np.testing.assert_array_equal(table.timesteps, ref.timesteps.numpy()[steps - k:])
    for i, t in enumerate(table.timesteps):
        prev = t - ref.config.num_train_timesteps // steps
        alpha = ref.alphas_cumprod[t]
        alpha_prev = ref.alphas_cumprod[prev] if prev >= 0 else ref.final_alpha_cumprod
        np.testing.assert_allclose(table.a_t[i] ** 2, alpha.item(), rtol=1e-12)
        np.testing.assert_allclose(table.a_prev[i] ** 2, alpha_prev.item(), rtol=1e-12)
        a, ap = alpha.double().item(), alpha_prev.double().item()
        np.testing.assert_allclose(table.sigma[i], eta * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap)), rtol=1e-12)
        # diffusers evaluates 1 − ᾱ_t/ᾱ_t' in float32, which cancels for adjacent timesteps (up to ~1e-4 relative)
        sigma32 = eta * ref._get_variance(int(t), int(prev)).double().sqrt().item()
        np.testing.assert_allclose(table.sigma[i], sigma32, rtol=1e-3, atol=1e-9)
        assert table.draws_noise[i] == (prev > 0)


def test_sd_default_golden_values():
    table = step_table(DDIMConfig.from_dict(SD), 50, 0.8, 0.1)
    assert len(table) == 40
    assert table.timesteps[0] == 781 and table.timesteps[-1] == 1
    assert table.draws_noise[:-1].all() and not table.draws_noise[-1]
    beta_1 = (0.00085 ** 0.5 + (0.012 ** 0.5 - 0.00085 ** 0.5) / 999) ** 2  # SD's scaled_linear schedule by hand
    np.testing.assert_allclose(table.a_t[-1] ** 2, (1 - 0.00085) * (1 - beta_1), rtol=1e-6)
    assert table.a_prev[-1] ** 2 == pytest.approx(0.99915, rel=1e-5)  # final alpha = ᾱ_0 (set_alpha_to_one=False)


def test_eta_zero_gives_zero_sigma_and_ddim_coefficients():
    table = step_table(DDIMConfig.from_dict(SD), 20, 1.0, 0.0)
    assert (table.sigma == 0).all()
    np.testing.assert_allclose(table.c ** 2, 1 - table.a_prev ** 2, rtol=1e-12)


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=1001), "num_inference_steps"),
    (dict(strength=0.0), "strength"),
    (dict(strength=1.5), "strength"),
    (dict(num_inference_steps=3, strength=0.2), "strength"),
    (dict(eta=-0.1), "eta"),
    (dict(eta=float("nan")), "eta"),
    (dict(eta=5.0), "eta"),
])
def test_bad_step_parameters(kwargs, name):
    args = dict(num_inference_steps=10, strength=0.8, eta=0.1) | kwargs
    with pytest.raises(ValueError, match=name):
        step_table(DDIMConfig.from_dict(SD), **args)


def test_num_inference_steps_type():
    with pytest.raises(TypeError, match="num_inference_steps"):
        step_table(DDIMConfig.from_dict(SD), 10.0, 0.8, 0.1)


@pytest.mark.parametrize("cfg,name", [
    (dict(beta_schedule="cubic"), "beta_schedule"),
    (dict(timestep_spacing="random"), "timestep_spacing"),
    (dict(prediction_type="flow"), "prediction_type"),
    (dict(thresholding=True), "thresholding"),
])
def test_bad_scheduler_config(cfg, name):
    with pytest.raises(ValueError, match=name):
        DDIMConfig.from_dict(cfg)


def test_table_is_float64_and_on_cpu():
    table = step_table(DDIMConfig.from_dict(SD), 50, 0.8, 0.1)
    for arr in (table.a_t, table.b_t, table.a_prev, table.sigma, table.c):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float64
    assert not any(torch.is_tensor(v) for v in vars(table).values())


@pytest.mark.parametrize("mode", ["cycle", "source", "target", "ddim"])
def test_a_table_of_the_wrong_kind_is_refused_naming_both(pipe, mode):
    """A DPM table given to a DDIM mode, or a DDIM table to "dpm++", is named, not an AttributeError deep in the
    loop."""
    from rtcore.sampling import Rows, denoise
    from rtcore.schedule import dpm_table, step_table

    z = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match=f"mode '{mode}' steps by a StepTable, got a DPMTable"):
        denoise(pipe.engines.unet, dpm_table(pipe.engines.scheduler, 4), Rows(mode), z, None, torch.float32)
    with pytest.raises(ValueError, match="mode 'dpm\\+\\+' steps by a DPMTable, got a StepTable"):
        denoise(pipe.engines.unet, step_table(pipe.engines.scheduler, 4, 1.0, 0.0), Rows("dpm++"), z, None,
                torch.float32)
