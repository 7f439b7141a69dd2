"""The paper's reported numbers (plugins/tasks/paper_numbers.csv), for the leaderboard."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

import pandas


@lru_cache(maxsize=None)
def _table() -> pandas.DataFrame:
    with files("harness_plugins.tasks").joinpath("paper_numbers.csv").open() as handle:
        return pandas.read_csv(handle)


def paper_numbers(task_plugin: str) -> pandas.DataFrame:
    """Rows (dataset, paper_row, metric, value) that the paper reports for one task family."""
    table = _table()
    return table[table.task_plugin == task_plugin].drop(columns="task_plugin").reset_index(drop=True)
