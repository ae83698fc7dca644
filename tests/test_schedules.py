import pytest

from sparse_rl.schedules import UpdateWindow, constant_drop_fraction, cosine_drop_fraction, polynomial_sparsity


def test_cosine_drop_fraction_starts_at_initial_and_reaches_zero_at_end():
    assert cosine_drop_fraction(0.3, 0.0) == pytest.approx(0.3)
    assert cosine_drop_fraction(0.3, 0.5) == pytest.approx(0.15)
    assert cosine_drop_fraction(0.3, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert cosine_drop_fraction(0.3, 2.0) == pytest.approx(0.0, abs=1e-12)


def test_constant_drop_fraction():
    assert constant_drop_fraction(0.3, 0.9) == 0.3


def test_polynomial_sparsity_is_cubic_zhu_gupta():
    assert polynomial_sparsity(0.9, 0.0, 3) == 0.0
    assert polynomial_sparsity(0.9, 0.5, 3) == pytest.approx(0.9 * (1 - 0.5**3))
    assert polynomial_sparsity(0.9, 1.0, 3) == pytest.approx(0.9)
    assert polynomial_sparsity(0.9, 1.5, 3) == pytest.approx(0.9)


def test_update_window_points_scale_with_the_budget():
    window = UpdateWindow.from_fractions(1000, 0.2, 0.8, 100)
    assert (window.start, window.end) == (200, 800)
    assert window.latest_point(250) is None
    assert window.latest_point(300) == 300
    assert window.latest_point(399) == 300
    assert window.latest_point(800) == 800
    assert window.latest_point(5000) == 800
    assert UpdateWindow.from_fractions(10_000, 0.2, 0.8, 100).end == 8000


def test_update_window_includes_the_end_even_off_the_grid():
    window = UpdateWindow.from_fractions(1000, 0.0, 0.75, 100)
    assert window.latest_point(749) == 700
    assert window.latest_point(750) == 750


@pytest.mark.parametrize("start, end, interval", [(0.5, 0.2, 10), (-0.1, 0.5, 10), (0.0, 0.5, 0)])
def test_bad_windows_are_rejected(start, end, interval):
    with pytest.raises(ValueError):
        UpdateWindow.from_fractions(1000, start, end, interval)
