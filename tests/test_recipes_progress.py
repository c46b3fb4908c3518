"""recipes.common.TimeBudgetProgressCallback: a time-capped run's bar shows the budget, not a max_steps ETA (#13)."""

from types import SimpleNamespace

from recipes import common


def test_time_capped_bar_counts_seconds_of_the_budget_and_shows_the_step(monkeypatch):
    clock = {"now": 50.0}
    monkeypatch.setattr(common.time, "monotonic", lambda: clock["now"])
    budget = common.TimeBudgetCallback(max_seconds=420.0)
    budget.spent_seconds = 20.0  # a resumed run: 20 s of the budget were spent before
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=3000)
    budget.on_train_begin(None, state, None)
    progress = common.TimeBudgetProgressCallback(budget)
    progress.on_train_begin(None, state, None)
    assert (progress.training_bar.total, progress.training_bar.n) == (420, 20)
    clock["now"], state.global_step = 150.0, 40  # 100 s later, 40 steps
    progress.on_step_end(None, state, None)
    assert progress.training_bar.n == 120  # seconds of the budget, not steps
    assert progress.training_bar.postfix == "step 40/3000, 0.33 steps/s"
    clock["now"] = 1000.0  # past the budget: the bar stops at its total
    progress.on_step_end(None, state, None)
    assert progress.training_bar.n == 420
    progress.on_train_end(None, state, None)
