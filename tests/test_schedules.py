import pytest

from byol_bench.errors import UserError
from byol_bench.models.momentum import parse_momentum_schedule
from byol_bench.trial.schedules import learning_rate

TOTAL = 200


@pytest.mark.parametrize("text, start, end", [
    ("constant:0.99", 0.99, 0.99),
    ("cosine:0.99-1.0", 0.99, 1.0),
    ("cosine:0.996-1.0", 0.996, 1.0),
    ("linear:0.9-0.99", 0.9, 0.99),
    ("warmup:0.99@0.1", 0.0, 0.99),
])
def test_momentum_schedules_hit_their_endpoints_and_are_monotone(text, start, end):
    schedule = parse_momentum_schedule(text)
    values = [schedule(step, TOTAL) for step in range(TOTAL)]
    assert values[0] == pytest.approx(start)
    assert values[-1] == pytest.approx(end)
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))


def test_cosine_is_the_byol_paper_formula():
    import math

    schedule = parse_momentum_schedule("cosine:0.99-1.0")
    k, K = 50, TOTAL - 1
    assert schedule(k, TOTAL) == pytest.approx(1 - (1 - 0.99) * (math.cos(math.pi * k / K) + 1) / 2)


def test_warmup_reaches_its_value_at_the_fraction():
    schedule = parse_momentum_schedule("warmup:0.99@0.1")
    assert schedule(round(0.1 * (TOTAL - 1)), TOTAL) == pytest.approx(0.99, abs=0.01)
    assert schedule(TOTAL // 2, TOTAL) == pytest.approx(0.99)


@pytest.mark.parametrize("text", ["cosine", "cosine:0.99", "step:0.9-1", "constant:1.5", "linear:a-b", "warmup:0.99@0", ""])
def test_bad_momentum_schedules_are_user_errors(text):
    with pytest.raises(UserError, match="momentum_schedule"):
        parse_momentum_schedule(text)


def test_learning_rate_warms_up_then_decays_to_zero():
    values = [learning_rate(s, 100, 1.0, 10, "cosine") for s in range(100)]
    assert values[9] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(values[:10], values[1:10]))
    assert all(b <= a for a, b in zip(values[10:], values[11:]))
    assert values[-1] < 0.01
    assert learning_rate(50, 100, 0.5, 0, "constant") == 0.5
