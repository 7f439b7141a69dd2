"""Intervals and ranking agreement (harness.results.stats) against scipy and formulas by
hand, the outcomes record format, and the leaderboard's `±`, seed-mean rows, ranks and
generator ranking rendered from hand-written results."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.stats

from harness.config.registry import use_registry
from harness.results.leaderboard import render_leaderboard
from harness.results.stats import bootstrap_interval, ranking_agreement, seed_interval
from harness.results.store import Result, ResultStore, pack_outcomes, unpack_outcomes

N = 540  # the digits test split


def correct_of(hits: int, n: int = N, seed: int = 0) -> np.ndarray:
    """n 0/1 outcomes with `hits` ones, in a shuffled order."""
    return np.random.default_rng(seed).permutation(np.r_[np.ones(hits), np.zeros(n - hits)]).astype(np.uint8)


def test_bootstrap_interval_equals_scipy_with_the_same_seed() -> None:
    outcomes = correct_of(412)
    low, high = bootstrap_interval(outcomes, seed=3)
    direct = scipy.stats.bootstrap(
        (outcomes.astype(float),), np.mean, n_resamples=2000, method="percentile", confidence_level=0.95,
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert (low, high) == pytest.approx((direct.low, direct.high), abs=1e-12)
    assert low < outcomes.mean() < high
    se = math.sqrt(outcomes.mean() * (1 - outcomes.mean()) / N)  # the normal approximation, by hand
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert bootstrap_interval(outcomes, seed=3) == (low, high)  # seeded: the same every time
    assert bootstrap_interval(np.ones(10)) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_interval([])


def test_seed_interval_is_the_t_interval_by_formula() -> None:
    t_975_2 = 4.302652729911275  # t quantile, 0.975, 2 degrees of freedom, from tables
    mean, s = 2.0, 1.0  # of [1, 2, 3]
    assert seed_interval([1, 2, 3]) == pytest.approx((mean - t_975_2 * s / math.sqrt(3), mean + t_975_2 * s / math.sqrt(3)))
    assert seed_interval([5.0]) is None and seed_interval([]) is None
    assert seed_interval([4, 4, 4]) == pytest.approx((4, 4))


def test_ranking_agreement_equals_kendalls_tau_by_hand_and_scipy() -> None:
    ours = {"a": 5.0, "b": 3.0, "c": 4.0, "d": 1.0, "only-ours": 9.0}
    agreement = ranking_agreement(ours, ["a", "b", "c", "d", "only-reference"])
    assert agreement.n == 4 and agreement.names == ("a", "b", "c", "d")
    assert agreement.tau == pytest.approx((5 - 1) / 6)  # one of six pairs, (b, c), is discordant
    expected = scipy.stats.kendalltau([5, 3, 4, 1], [4, 3, 2, 1])
    assert agreement.tau == pytest.approx(expected.statistic) and agreement.pvalue == pytest.approx(expected.pvalue)
    assert ranking_agreement({"a": 1, "b": 2}, ["a", "b"]).tau == pytest.approx(-1.0)
    assert math.isnan(ranking_agreement({"a": 1}, ["a", "b"]).tau)
    with pytest.raises(ValueError):
        ranking_agreement(ours, ["a", "a"])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, N])
def test_outcomes_pack_and_unpack(n: int) -> None:
    bits = correct_of(n // 2, n)
    assert np.array_equal(unpack_outcomes(pack_outcomes(bits), n), bits)


def test_outcomes_are_compact_and_checked() -> None:
    assert len(pack_outcomes(np.ones(50_000, dtype=bool))) == 4 * math.ceil(6250 / 3)  # 8.3 kB for ImageNet
    with pytest.raises(ValueError, match="bytes"):
        unpack_outcomes(pack_outcomes(np.ones(16)), 7)
    with pytest.raises(ValueError, match="base64"):
        unpack_outcomes("not base64!", 3)
    with pytest.raises(ValueError, match="0/1"):
        pack_outcomes([0, 2])


REGISTRY = """
encoders:
  t-kml-mixup:    {plugin: dino, group: procedural, params: {data: shaders-kml-mixup, recipe: tiny}}
  t-kml-mixup-s1: {plugin: dino, group: procedural, params: {data: shaders-kml-mixup, recipe: tiny, seed: 1}}
  t-kml-mixup-s2: {plugin: dino, group: procedural, params: {data: shaders-kml-mixup, recipe: tiny, seed: 2}}
  t-kml:          {plugin: dino, group: procedural, params: {data: shaders-kml, recipe: tiny}}
  t-shaders:      {plugin: dino, group: procedural, params: {data: shaders, recipe: tiny}}
  t-stylegan:     {plugin: dino, group: procedural, params: {data: stylegan-oriented, recipe: tiny}}
  t-random:       {plugin: random-init, group: white-box, params: {arch: vit_tiny_patch16_224, seed: 0}}
"""
KNN_HITS = {"t-kml-mixup": 486, "t-kml-mixup-s1": 480, "t-kml-mixup-s2": 470, "t-kml": 475,
            "t-shaders": 300, "t-stylegan": 400, "t-random": 60}
LINEAR_HITS = {"t-kml-mixup": 500, "t-kml": 490, "t-shaders": 420, "t-stylegan": 430}


def headline(task: str, plugin: str, encoder: str, hits: int) -> Result:
    outcomes = correct_of(hits, seed=len(encoder))
    group = "white-box" if encoder == "t-random" else "procedural"  # as the registry entries say
    return Result(task=task, dataset="digits", encoder=encoder, metric="top1", value=100.0 * outcomes.mean(), n=N,
                  headline=True, task_plugin=plugin, encoder_group=group, cell_key=f"{task}-{encoder}",
                  outcomes=pack_outcomes(outcomes))


def table_rows(board: str, heading: str) -> list[dict[str, str]]:
    section = board[board.index(heading):].split("\n## ")[0].split("\n### ")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


@pytest.fixture
def board(tmp_path):
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(REGISTRY)
    registry = use_registry(registry_file)
    store = ResultStore(tmp_path / "out")
    for encoder, hits in KNN_HITS.items():
        store.append([headline("knn-x", "knn", encoder, hits),
                      Result(task="knn-x", dataset="digits", encoder=encoder, metric="top5", value=99.0, n=N,
                             task_plugin="knn")])
    for encoder, hits in LINEAR_HITS.items():
        store.append([headline("linear-x", "linear", encoder, hits)])
    return render_leaderboard(tmp_path / "out", registry=registry).read_text()


def test_results_keep_outcomes_only_where_given(board, tmp_path) -> None:
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert sum('"outcomes":' in line for line in lines) == len(KNN_HITS) + len(LINEAR_HITS)
    read = {(r.task, r.encoder, r.metric): r for r in ResultStore(tmp_path / "out").read()}
    record = read[("knn-x", "t-kml", "top1")]
    assert unpack_outcomes(record.outcomes, N).sum() == KNN_HITS["t-kml"]
    assert read[("knn-x", "t-kml", "top5")].outcomes is None


def test_leaderboard_shows_intervals_seed_means_and_ranks(board) -> None:
    rows = table_rows(board, "## knn-x:")
    by_name = {row["encoder"]: row for row in rows}
    intervals = {}
    for encoder, hits in KNN_HITS.items():
        outcomes = correct_of(hits, seed=len(encoder)).astype(float)
        ci = scipy.stats.bootstrap((outcomes,), np.mean, n_resamples=2000, method="percentile",
                                   rng=np.random.default_rng(0)).confidence_interval
        intervals[encoder] = (100 * ci.low, 100 * ci.high)
        assert by_name[encoder]["digits"] == f"{100 * hits / N:.2f} ± {50 * (ci.high - ci.low):.2f}"
    seeds = [100 * KNN_HITS[name] / N for name in ("t-kml-mixup", "t-kml-mixup-s1", "t-kml-mixup-s2")]
    half = 4.302652729911275 * np.std(seeds, ddof=1) / math.sqrt(3)
    mean_row = by_name["t-kml-mixup (mean of 3 seeds)"]
    assert mean_row["digits"] == f"{np.mean(seeds):.2f} ± {half:.2f}" and mean_row["group"] == "procedural"
    intervals["t-kml-mixup (mean of 3 seeds)"] = (np.mean(seeds) - half, np.mean(seeds) + half)

    values = [float(row["digits"].split(" ± ")[0]) for row in rows]
    assert values == sorted(values, reverse=True)  # best first
    expected = []  # competition ranks; a row overlapping the one above shares its rank
    for i, row in enumerate(rows):
        a, b = intervals[row["encoder"]], intervals[rows[i - 1]["encoder"]] if i else None
        expected.append(expected[-1] if b and a[0] <= b[1] and b[0] <= a[1] else i + 1)
    assert [row["rank"] for row in rows] == [("=" if expected.count(r) > 1 else "") + str(r) for r in expected]
    assert rows[0]["rank"] == "=1" and by_name["t-random"]["rank"] == str(len(rows))


def test_the_half_interval_has_as_many_decimals_as_its_value(tmp_path) -> None:
    """Three seeds scoring alike give a zero-width t-interval; one hit in 540 is a value
    below 1, which the leaderboard prints to 4 decimals."""
    (tmp_path / "registry.yaml").write_text(REGISTRY)
    use_registry(tmp_path / "registry.yaml")
    store = ResultStore(tmp_path / "out")
    hits = {"t-kml-mixup": 270, "t-kml-mixup-s1": 270, "t-kml-mixup-s2": 270, "t-random": 1}
    store.append([headline("knn-x", "knn", encoder, n) for encoder, n in hits.items()])
    rows = {row["encoder"]: row["digits"] for row in table_rows(render_leaderboard(tmp_path / "out").read_text(), "## knn-x:")}
    assert rows["t-kml-mixup (mean of 3 seeds)"] == "50.00 ± 0.00"
    ci = scipy.stats.bootstrap((correct_of(1, seed=len("t-random")).astype(float),), np.mean, n_resamples=2000,
                               method="percentile", rng=np.random.default_rng(0)).confidence_interval
    assert rows["t-random"] == f"{100 / N:.4f} ± {50 * (ci.high - ci.low):.4f}"


def test_leaderboard_ranks_generators_against_the_paper(board) -> None:
    assert "## Generator ranking" in board
    knn = table_rows(board, "### knn:")
    assert [row["generator"] for row in knn] == [
        "shaders-kml-mixup", "shaders-kml", "stylegan-oriented", "shaders", "(random init.)"]
    assert [row["paper row"] for row in knn] == ["S. KML Mixup", "S. KML", "StyleGAN", "Shaders", "Random init."]
    assert [row["paper rank"] for row in knn] == ["1", "2", "4", "3", "5"]
    seeds = [100 * KNN_HITS[n] / N for n in ("t-kml-mixup", "t-kml-mixup-s1", "t-kml-mixup-s2")]
    half = scipy.stats.t.ppf(0.975, 2) * np.std(seeds, ddof=1) / math.sqrt(3)  # the t-interval over training seeds
    assert knn[0]["encoders"] == "3" and knn[0]["ours"] == f"{np.mean(seeds):.2f} ± {half:.2f}"
    assert knn[1]["ours"] == f"{100 * KNN_HITS['t-kml'] / N:.2f}"  # one seed: no interval
    assert [row["rank"] for row in knn] == ["1", "2", "3", "4", "5"]  # intervals overlap no row above
    tau = scipy.stats.kendalltau([5, 4, 2, 3, 1], [5, 4, 3, 2, 1])  # one discordant pair: shaders / StyleGAN
    section = board[board.index("### knn:"):].split("### linear")[0]
    found = re.search(r"tau between our order and the paper's: (\S+) \(two-sided p = (\S+), over (\d+) rows", section)
    assert found and float(found[1]) == pytest.approx(tau.statistic, abs=0.005) == pytest.approx(0.8)
    assert float(found[2]) == pytest.approx(tau.pvalue, abs=0.0005) and found[3] == "5"

    linear = table_rows(board, "### linear:")  # the paper's Table 6 has no random init. row
    assert [row["generator"] for row in linear] == ["shaders-kml-mixup", "shaders-kml", "stylegan-oriented", "shaders"]
    section = board[board.index("### linear:"):]
    found = re.search(r"tau between our order and the paper's: (\S+) \(two-sided p = (\S+), over (\d+) rows", section)
    expected = scipy.stats.kendalltau([4, 3, 1, 2], [4, 3, 2, 1])
    assert found and float(found[1]) == pytest.approx(expected.statistic, abs=0.005) and found[3] == "4"


def test_no_generator_ranking_with_one_generator(tmp_path) -> None:
    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(REGISTRY)
    registry = use_registry(registry_file)
    store = ResultStore(tmp_path / "out")
    for encoder in ("t-kml-mixup", "t-kml-mixup-s1", "t-random"):
        store.append([headline("knn-x", "knn", encoder, KNN_HITS[encoder])])
    board = render_leaderboard(tmp_path / "out", registry=registry).read_text()
    assert "Generator ranking" not in board and "t-kml-mixup (mean of 2 seeds)" in board


def test_knn_and_linear_headlines_carry_their_outcomes(tmp_path) -> None:
    import harness

    knn = harness.get_task("knn", datasets=["digits"], ks=[1])
    linear = harness.get_task("linear", datasets=["lfw-faces"], cs=[0.01])
    knn.name, linear.name = "knn-outcomes", "linear-outcomes"
    tasks = [knn, linear]
    records = harness.run(encoders=["rgb"], tasks=tasks, out=tmp_path / "out")
    headlines = [r for r in records if r.headline]
    assert sorted((r.task_plugin, r.n) for r in headlines) == [("knn", N), ("linear", 100)]
    for record in headlines:
        correct = unpack_outcomes(record.outcomes, record.n)
        assert 100.0 * correct.mean() == pytest.approx(record.value, abs=1e-9), record.task
    assert all(r.outcomes is None for r in records if not r.headline)
    board = (tmp_path / "out" / "LEADERBOARD.md").read_text()
    assert board.count(" ± ") >= 2
