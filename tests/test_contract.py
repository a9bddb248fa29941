"""Contract tests every flow model and adapter inherits (the diffusers scheduler-test pattern)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_UNET, random_cond, tiny_spec

from fewstep.models.contract import Cond, FlowModel
from fewstep.models.unet_flow import build_unet_flow
from fewstep.models.vp_adapter import DiffusersUNetDenoiser, VPFlowAdapter


class FlowModelContract:
    """Subclasses define `make_model()`; every test below then runs against it."""

    channels, size = 3, 16

    def make_model(self) -> FlowModel:
        raise NotImplementedError

    def inputs(self, b: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(b, self.channels, self.size, self.size, generator=g)
        return x, torch.rand(b, generator=g), random_cond(b, seed)

    @torch.no_grad()
    def test_velocity_has_the_input_shape(self):
        x, t, c = self.inputs()
        v = self.make_model()(x, t, c)
        assert v.shape == x.shape and v.dtype == x.dtype and torch.isfinite(v).all()

    @torch.no_grad()
    def test_rows_are_independent_of_the_batch(self):
        model = self.make_model()
        x, t, c = self.inputs(4)
        full = model(x, t, c)
        alone = torch.cat([model(x[i : i + 1], t[i : i + 1], c.index(slice(i, i + 1))) for i in range(4)])
        torch.testing.assert_close(full, alone, atol=1e-5, rtol=1e-4)

    @torch.no_grad()
    def test_deterministic(self):
        model = self.make_model()
        x, t, c = self.inputs()
        torch.testing.assert_close(model(x, t, c), model(x, t, c), atol=0, rtol=0)

    @torch.no_grad()
    def test_depends_on_time_and_condition(self):
        model = self.make_model()
        x, t, c = self.inputs()
        v = model(x, t, c)
        assert not torch.allclose(v, model(x, (t + 0.3) % 1, c))
        assert not torch.allclose(v, model(x, t, random_cond(3, seed=9)))

    def test_rejects_bad_shapes_with_clear_errors(self):
        model = self.make_model()
        x, t, c = self.inputs()
        with pytest.raises(ValueError, match=r"t must have shape \[batch_size\]"):
            model(x, t[:2], c)
        with pytest.raises(ValueError, match="x must have shape"):
            model(x[0], t, c)
        with pytest.raises(ValueError, match="cond has batch"):
            model(x, t, random_cond(2))


class TestUNetFlowModel(FlowModelContract):
    def make_model(self):
        torch.manual_seed(0)
        return build_unet_flow(TINY_UNET).eval()

    def test_wrong_channel_count_is_named(self):
        x, t, c = self.inputs()
        with pytest.raises(ValueError, match="3 channels"):
            self.make_model()(x[:, :2], t, c)


def _tiny_vp(prediction_type: str) -> VPFlowAdapter:
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    unet = build_unet_flow(TINY_UNET).unet
    return VPFlowAdapter(DiffusersUNetDenoiser(unet), DDPMScheduler().alphas_cumprod, prediction_type).eval()


class TestVPEpsilonAdapter(FlowModelContract):
    def make_model(self):
        return _tiny_vp("epsilon")


class TestVPVPredictionAdapter(FlowModelContract):
    def make_model(self):
        return _tiny_vp("v_prediction")


class TestLoadedCheckpoint(FlowModelContract):
    """A model saved and reloaded satisfies the contract and gives the same velocities."""

    def make_model(self):
        import tempfile

        from fewstep.models.loading import load_model, save_model

        model = TestUNetFlowModel().make_model()
        with tempfile.TemporaryDirectory() as d:
            save_model(f"{d}/m.safetensors", model, tiny_spec())
            loaded, spec = load_model(f"{d}/m.safetensors")
        x, t, c = self.inputs()
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, t, c), model(x, t, c), atol=0, rtol=0)
        assert spec["params"] == sum(p.numel() for p in model.parameters())
        return loaded


def test_cond_validates_its_fields():
    with pytest.raises(ValueError, match="text_mask must have shape"):
        Cond(torch.zeros(2, 4, 8), torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"Cond.text must have shape \(B, L, D\)"):
        Cond(torch.zeros(2, 8))
    c = Cond(torch.zeros(2, 4, 8), torch.ones(2, 4)).with_guidance(3.0)
    assert c.guidance.tolist() == [3.0, 3.0]
    assert Cond.cat([c, c]).batch_size == 4 and c.repeat(3).batch_size == 6
