"""Training seeds of one recipe, and the ranking of generators against the paper's.

Both read the registry beside the results: a record names its encoder, and the
encoder's registry entry says which plugin and parameters made it.

- Seed groups: encoders whose entries differ only in `params.seed` (same plugin, same
  other parameters, distinct seeds) are training seeds of one recipe; the leaderboard
  adds a row for their mean with its t-interval.
- Generator ranking: a `dino` encoder's generator is its `data` parameter. Generators
  are ranked by their encoders' mean headline top-1 (averaged over training seeds within
  each task and dataset, then over the tasks and datasets that every ranked generator
  was evaluated on), beside the paper's order of the same rows (the mean of the task
  plugin's paper numbers over its datasets), with Kendall's tau between the two.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable

from harness.results.stats import overlap, ranking_agreement, seed_interval

if TYPE_CHECKING:
    import pandas

    from harness.config.registry import Registry

RANDOM_INIT = "(random init.)"
"""The ranking's entry for encoders of the `random-init` plugin: the paper's floor."""

PAPER_TABLES = {"knn": "kNN top-1 %, the paper's Table 1", "linear": "linear probe top-1 %, the paper's Table 6"}


def _seed_default(registry: Registry, plugin: str) -> Any:
    """The plugin's default seed, so that an entry without `seed` counts as that seed."""
    try:
        field = registry.plugins.get("encoder", plugin).Params.model_fields.get("seed")
    except Exception:  # an unknown plugin: its entries are compared as written
        return None
    return None if field is None else field.default


def recorded_specs(frame: pandas.DataFrame) -> dict[str, dict[str, Any]]:
    """{encoder: the plugin, parameters and architecture its latest record was computed with}."""
    if "encoder_spec" not in frame:
        return {}
    return {record.encoder: record.encoder_spec for record in frame.itertuples() if isinstance(record.encoder_spec, dict)}


def _spec(registry: Registry, name: str, recorded: dict[str, dict[str, Any]] | None) -> tuple[str, dict[str, Any]] | None:
    """(plugin, parameters) of an encoder: as recorded with its results, else its registry entry."""
    if recorded and name in recorded:
        return recorded[name]["plugin"], dict(recorded[name]["params"])
    spec = registry.spec("encoder", name)
    return None if spec is None else (spec.plugin, dict(spec.params))


def seed_groups(
    registry: Registry, encoders: Iterable[str], recorded: dict[str, dict[str, Any]] | None = None
) -> dict[str, list[str]]:
    """{label: member encoders} for encoders whose entries (as recorded with their results,
    else in the registry) differ only in their seed; the label is the shortest member name.
    Encoders found in neither are left out."""
    recipes: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name in sorted(set(encoders)):
        found = _spec(registry, name, recorded)
        if found is None:
            continue
        plugin, params = found
        seed = params.pop("seed", _seed_default(registry, plugin))
        recipes[json.dumps([plugin, params], sort_keys=True, default=str)].append((name, json.dumps(seed, default=str)))
    groups = {}
    for members in recipes.values():
        names = [name for name, _ in members]
        if len(members) >= 2 and len({seed for _, seed in members}) == len(members):
            groups[min(names, key=lambda n: (len(n), n))] = names
    return groups


def generator_rows(registry: Registry) -> dict[str, str]:
    """{generator: the paper's row label} from the registry's `dino` encoders that name a
    `paper_row`. A generator no such encoder uses takes the row of a generator of the same
    plugin and `base` (the CPU-size StyleGAN takes the paper-size one's row)."""
    direct: dict[str, str] = {}
    for spec in registry.section("encoder").values():
        data = spec.params.get("data")
        if spec.plugin == "dino" and getattr(spec, "paper_row", None) and isinstance(data, str):
            direct[data] = spec.paper_row

    def kind(name: str) -> str | None:
        spec = registry.spec("generator", name)
        return None if spec is None else json.dumps([spec.plugin, spec.params.get("base")], default=str)

    by_kind: dict[str | None, set[str]] = defaultdict(set)
    for generator, row in direct.items():
        by_kind[kind(generator)].add(row)
    rows = dict(direct)
    for generator in registry.section("generator"):
        candidates = by_kind.get(kind(generator), set())
        if generator not in rows and len(candidates) == 1:
            rows[generator] = next(iter(candidates))
    return rows


def _entries(
    registry: Registry, encoders: Iterable[str], recorded: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, str]], dict[str, str | None], dict[str, str | None]]:
    """({recipe: {dino encoder: generator}}, {dino encoder: its own paper_row},
    {random-init encoder: its architecture})."""
    recipes: dict[str, dict[str, str]] = defaultdict(dict)
    own_rows: dict[str, str | None] = {}
    random_init: dict[str, str | None] = {}
    for name in encoders:
        found = _spec(registry, name, recorded)
        if found is None:
            continue
        plugin, params = found
        if plugin == "random-init":
            random_init[name] = recorded.get(name, {}).get("architecture")
        data = params.get("data")
        if plugin == "dino" and isinstance(data, str):
            recipe = {key: value for key, value in params.items() if key not in ("data", "seed")}
            recipes[json.dumps(recipe, sort_keys=True, default=str)][name] = data
            own_rows[name] = getattr(registry.spec("encoder", name), "paper_row", None)
    return recipes, own_rows, random_init


def _floor(random_init: dict[str, str | None], members: Iterable[str], recorded: dict[str, dict[str, Any]]) -> list[str]:
    """The random-init encoders of the recipe's architecture (all of them when the records
    do not say which architecture each has)."""
    architectures = {recorded.get(name, {}).get("architecture") for name in members} - {None}
    same = [name for name, architecture in random_init.items() if architecture in architectures]
    return same if same else list(random_init)


def _paper_means(registry: Registry, plugin: str) -> dict[str, float]:
    """{paper row: mean of the paper's numbers for the task plugin's headline over its datasets}."""
    entry = registry.plugins.classes["task"].get(plugin)
    paper = entry.cls.paper_numbers() if entry else None
    if paper is None or paper.empty:
        return {}
    paper = paper[paper.metric == "top1"] if "top1" in set(paper.metric) else paper
    return {str(row): float(value) for row, value in paper.groupby("paper_row").value.mean().items()}


def _fmt(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.2f}"


def ranking_tables(frame: pandas.DataFrame, registry: Registry, plugin: str) -> list[str]:
    """Markdown lines ranking generators by the headline top-1 of one task plugin's
    results (one table per DINO recipe with two or more generators); [] when none has."""
    from tabulate import tabulate

    ok = frame[(frame.task_plugin == plugin) & frame.headline & (frame.status == "ok") & frame.value.notna()]
    if ok.empty:
        return []
    recorded = recorded_specs(ok)
    recipes, own_rows, random_init = _entries(registry, ok.encoder.unique(), recorded)
    recipes = {recipe: members for recipe, members in recipes.items() if len(set(members.values())) >= 2}
    if not recipes:
        return []
    rows_of = generator_rows(registry)
    paper = _paper_means(registry, plugin)
    lines = [f"### {plugin}: {PAPER_TABLES.get(plugin, 'headline')}", ""]
    for recipe, members in recipes.items():
        entry_of = dict(members) | {name: RANDOM_INIT for name in _floor(random_init, members, recorded)}
        row_of = {entry: rows_of.get(entry) for entry in set(members.values())} | {RANDOM_INIT: "Random init."}
        for name, generator in members.items():
            row_of[generator] = own_rows.get(name) or row_of[generator]
        # {entry: {(task, dataset): [value per encoder, i.e. per training seed]}}
        values: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
        of_encoder: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
        for record in ok[ok.encoder.isin(list(entry_of))].itertuples():
            values[entry_of[record.encoder]][(record.task, record.dataset)].append(float(record.value))
            of_encoder[record.encoder][(record.task, record.dataset)] = float(record.value)
        columns = set.intersection(*(set(cells) for entry, cells in values.items() if entry != RANDOM_INIT))
        if RANDOM_INIT in values and not columns <= set(values[RANDOM_INIT]):
            del values[RANDOM_INIT]  # the floor is shown only where it was measured like the rest
        if len(recipes) > 1:
            settings = ", ".join(f"{key}={value}" for key, value in json.loads(recipe).items()) or "defaults"
            lines += [f"DINO encoders with {settings}:", ""]
        if not columns:
            lines += ["No task and dataset holds results of every generator here, so they are not ranked.", ""]
            continue
        score = {entry: sum(_mean(cells[c]) for c in columns) / len(columns) for entry, cells in values.items()}
        present = set(ok.encoder)
        encoders = {entry: sorted(name for name, e in entry_of.items() if e == entry and name in present) for entry in score}
        ours = sorted(score, key=lambda entry: (-score[entry], entry))
        compared = [entry for entry in ours if row_of.get(entry) in paper]
        reference = sorted((row_of[entry] for entry in compared), key=lambda row: (-paper[row], row))
        agreement = ranking_agreement({row_of[entry]: score[entry] for entry in compared}, reference)
        # the spread over training seeds: each encoder's own mean over the columns
        interval = {
            entry: seed_interval([_mean([of_encoder[name][c] for c in columns]) for name in names if columns <= set(of_encoder[name])])
            for entry, names in encoders.items()
        }
        table = []
        for rank, entry in zip(_tied_ranks([interval[entry] for entry in ours]), ours):
            row = row_of.get(entry)
            known = row in paper
            half = "" if interval[entry] is None else f" ± {_fmt((interval[entry][1] - interval[entry][0]) / 2)}"
            table.append([
                rank, entry, len(encoders[entry]), _fmt(score[entry]) + half, row or "",
                reference.index(row) + 1 if known else "", _fmt(paper[row]) if known else "",
            ])
        headers = ["rank", "generator", "encoders", "ours", "paper row", "paper rank", "paper"]
        where = ", ".join(f"{task} / {dataset}" for task, dataset in sorted(columns))
        lines += [tabulate(table, headers=headers, tablefmt="github", disable_numparse=True), ""]
        lines += [f"Over {where}. " + _tau_sentence(agreement), ""]
        per_column = []
        for column in sorted(columns):
            ranked = sorted(values, key=lambda entry: (-_mean(values[entry][column]), entry))
            alone = ranking_agreement({row_of[e]: _mean(values[e][column]) for e in ranked if e in compared}, reference)
            per_column.append([" / ".join(column), " > ".join(ranked), _fmt(alone.tau), _fmt(alone.pvalue)])
        if len(per_column) > 1:
            lines += ["Each task and dataset alone (generators best first, tau against the paper's order):", ""]
            lines += [tabulate(per_column, headers=["task / dataset", "order", "tau", "p"], tablefmt="github", disable_numparse=True), ""]
    return lines


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _tied_ranks(intervals: list[tuple[float, float] | None]) -> list[str]:
    """Competition ranks of rows sorted best first; a row whose interval overlaps the row
    above shares its rank, marked `=`."""
    ranks: list[int] = []
    for i, interval in enumerate(intervals):
        ranks.append(ranks[-1] if i and overlap(intervals[i - 1], interval) else i + 1)
    return [("=" if ranks.count(r) > 1 else "") + str(r) for r in ranks]


def _tau_sentence(agreement: Any) -> str:
    if agreement.n < 2:
        return f"Kendall's tau needs two or more generators with a paper row; {agreement.n} here."
    return (
        f"Kendall's tau between our order and the paper's: {agreement.tau:.2f} "
        f"(two-sided p = {agreement.pvalue:.3f}, over {agreement.n} rows)."
    )


def generator_ranking_section(frame: pandas.DataFrame, registry: Registry) -> list[str]:
    """The leaderboard's "Generator ranking" section, or [] when no results hold DINO
    encoders trained on two or more generators."""
    if frame.empty:
        return []
    body = []
    for plugin in PAPER_TABLES:
        body += ranking_tables(frame, registry, plugin)
    if not body:
        return []
    intro = (
        "Generators ranked by the mean headline top-1 of the DINO encoders trained on them "
        "(averaged over training seeds, then over the tasks and datasets every ranked generator "
        f"has), beside the paper's order of the same rows. `ours` carries the 95 % t-interval over "
        "training seeds (each encoder's mean over the same tasks and datasets); `rank` marks with `=` "
        f"rows whose intervals overlap the row above. `{RANDOM_INIT}` pools the random-init encoders "
        "of the DINO encoders' architecture. `paper rank` counts only the rows compared here."
    )
    return ["## Generator ranking", "", intro, ""] + body
