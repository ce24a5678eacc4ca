import math

import pytest

from vernacular.train.schedule import ScheduleConfig, lr_factor, mtp_weight


def test_warmup_is_linear_in_steps():
    cfg = ScheduleConfig(kind="wsd", warmup=10, decay_frac=0.2)
    assert [round(lr_factor(cfg, s, 0.0), 6) for s in range(3)] == [0.1, 0.2, 0.3]
    assert lr_factor(cfg, 9, 0.05) == 1.0


def test_wsd_is_flat_then_decays_to_min():
    cfg = ScheduleConfig(kind="wsd", warmup=0, decay_frac=0.25, decay_shape="linear", min_lr_ratio=0.1)
    assert lr_factor(cfg, 100, 0.5) == 1.0
    assert lr_factor(cfg, 100, 0.749) == 1.0
    assert lr_factor(cfg, 100, 0.875) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(cfg, 100, 1.0) == pytest.approx(0.1)


def test_one_minus_sqrt_and_cosine_shapes():
    sqrt = ScheduleConfig(kind="wsd", warmup=0, decay_frac=0.5, decay_shape="1-sqrt")
    assert lr_factor(sqrt, 50, 0.5 + 0.5 * 0.25) == pytest.approx(1 - math.sqrt(0.25))
    cos = ScheduleConfig(kind="cosine", warmup=0)
    assert lr_factor(cos, 0, 0.0) == pytest.approx(1.0)
    assert lr_factor(cos, 0, 0.5) == pytest.approx(0.5)
    assert lr_factor(cos, 0, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_mtp_weight_drops_late():
    cfg = ScheduleConfig(mtp_weight=0.3, mtp_weight_late=0.1, mtp_switch=0.7)
    assert mtp_weight(cfg, 0.0) == 0.3 and mtp_weight(cfg, 0.69) == 0.3 and mtp_weight(cfg, 0.7) == 0.1


def test_bad_schedule_names_are_rejected():
    with pytest.raises(ValueError, match="unknown schedule"):
        ScheduleConfig(kind="step")
    with pytest.raises(ValueError, match="decay shape"):
        ScheduleConfig(decay_shape="exp")
