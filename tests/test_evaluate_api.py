"""Your own model from Python: `harness.evaluate` on a plain torch module, and encoder
objects mixed with instance names in `harness.run`. Numbers are checked against
scikit-learn's kNN on embeddings the test computes itself; reuse and recomputation are
read from results.jsonl."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import harness
from harness.errors import HarnessError
from harness.kinds import Encoder

TEMPERATURE = 0.07  # the knn task's weighted vote: a neighbour counts exp(similarity / T)


def tiny_net(seed: int = 0) -> torch.nn.Module:
    """A fixed random conv, ReLU and 2 x 2 average pooling: 64 features per image."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2))


def scale(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def records(out, **match) -> list[dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def pick(results, k: int, vote: str = "weighted") -> float:
    [value] = [r.value for r in results if r.metric == "top1" and r.params == {"k": k, "vote": vote}]
    return value


def test_a_module_scores_what_scikit_learn_computes_on_its_embeddings(tmp_path):
    from sklearn.neighbors import KNeighborsClassifier

    from harness.config.registry import active_registry
    from harness.datasets import open_dataset

    net = tiny_net()
    results = harness.evaluate(net, tasks=["knn-digits"], preprocess=scale, name="tiny-conv", out=tmp_path, device="cpu")
    assert {r.encoder for r in results} == {"tiny-conv"} and all(r.status == "ok" for r in results)
    assert {r.encoder_group for r in results} == {"unspecified"}  # not white-box: only its author knows its training data
    other = tiny_net()
    with torch.no_grad():
        next(other.parameters()).add_(0.01)  # other weights: a cell of its own
    grouped = harness.evaluate(other, tasks=["knn-digits"], preprocess=scale, name="tiny-conv-real", out=tmp_path, device="cpu", group="realistic")
    assert {r.encoder_group for r in grouped} == {"realistic"}
    board = (tmp_path / "LEADERBOARD.md").read_text()
    assert board.index("| realistic   | tiny-conv-real") < board.index("| unspecified | tiny-conv ")

    registry = active_registry()
    data = open_dataset("digits", registry.dataset("digits"), registry.plugins.readers())

    def features(split) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([net(scale(batch)).flatten(1) for batch in split.batches(256)]).numpy().astype(np.float64)

    train, test = features(data.train), features(data.test)
    labels_train, labels_test = np.asarray(data.train.labels), np.asarray(data.test.labels)
    for k, weights in ((1, "uniform"), (20, lambda d: np.exp((1.0 - d) / TEMPERATURE))):
        knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute", weights=weights).fit(train, labels_train)
        expected = 100.0 * float((knn.predict(test) == labels_test).mean())
        assert pick(results, k) == pytest.approx(expected, abs=1e-9), k
    assert [r.params for r in results if r.headline] == [{"k": 20, "vote": "weighted"}]


def test_the_same_weights_reuse_their_cells_and_a_changed_weight_recomputes(tmp_path):
    net = tiny_net()
    first = harness.evaluate(net, tasks=["knn-digits"], preprocess=scale, out=tmp_path, device="cpu")
    assert {r.encoder for r in first} == {"Sequential"}  # the class name, by default
    stored = len(records(tmp_path))

    again = harness.evaluate(copy.deepcopy(net), tasks=["knn-digits"], preprocess=scale, out=tmp_path, device="cpu")
    assert len(records(tmp_path)) == stored  # nothing computed: another object, the same weights
    assert [(r.cell_key, r.created, r.value) for r in again] == [(r.cell_key, r.created, r.value) for r in first]

    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 0.5
    changed = harness.evaluate(net, tasks=["knn-digits"], preprocess=scale, out=tmp_path, device="cpu")
    assert len(records(tmp_path)) == 2 * stored
    assert {r.keys["encoder"] for r in changed}.isdisjoint({r.keys["encoder"] for r in first})
    assert {r.cell_key for r in changed}.isdisjoint({r.cell_key for r in first})

    def doubled(images: torch.Tensor) -> torch.Tensor:
        return images.float() / 127.5

    other = harness.evaluate(net, tasks=["knn-digits"], preprocess=doubled, out=tmp_path, device="cpu")
    assert {r.cell_key for r in other}.isdisjoint({r.cell_key for r in changed})  # the preprocessing is in the key

    renamed = harness.evaluate(copy.deepcopy(net), tasks=["knn-digits"], preprocess=doubled, name="tiny-renamed", out=tmp_path, device="cpu")
    assert {r.encoder for r in renamed} == {"tiny-renamed"}  # records of its own, not another name's
    assert [(r.metric, r.params, r.value) for r in renamed] == [(r.metric, r.params, r.value) for r in other]
    assert {r.keys["encoder"] for r in renamed} == {r.keys["encoder"] for r in other}  # one encoder key: embeddings shared


class MeanColour(Encoder):
    """A user's own encoder: the mean of each channel."""

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(2, 3))


def test_encoder_objects_run_beside_instance_names(tmp_path):
    own = MeanColour("mean-colour")
    module = harness.as_encoder(tiny_net(), scale, name="tiny-conv")
    produced = harness.run(encoders=[own, "rgb", module], tasks=["knn-digits", "knn-seg-synthetic"], out=tmp_path, device="cpu")
    by_encoder = {(r.encoder, r.task): r.status for r in produced}
    assert {e for e, _ in by_encoder} == {"mean-colour", "rgb", "tiny-conv"}
    assert all(by_encoder[(e, "knn-digits")] == "ok" for e in ("mean-colour", "rgb", "tiny-conv"))
    skipped = [r for r in produced if r.encoder == "tiny-conv" and r.task == "knn-seg-synthetic"]
    assert [r.status for r in skipped] == ["skipped"] and "no patch features" in skipped[0].message

    # an object made from a registry name is that instance: its cells are reused
    again = harness.run(encoders=[harness.get_encoder("rgb")], tasks=["knn-digits"], out=tmp_path, device="cpu")
    assert again == []


class TrainedMeanColour(MeanColour):
    """The same features, from an encoder that declares it trains (its `prepare` does nothing)."""

    trainable = True


def test_cells_of_encoders_that_train_come_after_the_others(tmp_path):
    """Whatever the order given, so that a long training holds back no other cell."""
    harness.run(encoders=[TrainedMeanColour("trains"), "rgb", MeanColour("mean-colour")], tasks=["knn-digits"], out=tmp_path, device="cpu")
    order = [json.loads(line)["encoder"] for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert list(dict.fromkeys(order)) == ["rgb", "mean-colour", "trains"]


def test_a_cell_whose_dataset_is_missing_is_skipped_before_its_encoder_trains(tmp_path, monkeypatch):
    preparations = []
    monkeypatch.setattr(TrainedMeanColour, "prepare", lambda self, ctx=None: preparations.append(self.name))
    registry = tmp_path / "registry.yaml"
    registry.write_text(
        f"datasets:\n  elsewhere: {{format: imagefolder, root: {tmp_path / 'nowhere'}, env: ELSEWHERE_ROOT}}\n"
        "tasks:\n  knn-elsewhere: {plugin: knn, params: {datasets: [elsewhere]}}\n"
    )
    produced = harness.run(encoders=[TrainedMeanColour("trains")], tasks=["knn-elsewhere", "knn-digits"], out=tmp_path / "out",
                           registry=registry, device="cpu")
    status = {r.dataset: (r.status, r.message) for r in produced if r.headline or r.status != "ok"}
    assert status["elsewhere"][0] == "skipped" and "does not exist; set datasets.elsewhere.root" in status["elsewhere"][1]
    assert status["digits"][0] == "ok" and preparations == ["trains"]  # prepared once, for the cell that has its data
    preparations.clear()
    harness.run(encoders=[TrainedMeanColour("trains")], tasks=["knn-elsewhere"], out=tmp_path / "other", registry=registry, device="cpu")
    assert preparations == []


def test_bad_models_and_names_are_refused_clearly(tmp_path):
    with pytest.raises(HarnessError, match="needs `preprocess`"):
        harness.evaluate(tiny_net(), tasks=["knn-digits"], out=tmp_path)
    with pytest.raises(HarnessError, match="does its own preprocessing"):
        harness.evaluate(MeanColour("mean-colour"), tasks=["knn-digits"], preprocess=scale, out=tmp_path)
    with pytest.raises(HarnessError, match="'rgb': two different encoders"):
        harness.evaluate(tiny_net(), tasks=["knn-digits"], preprocess=scale, name="rgb", out=tmp_path)
    with pytest.raises(HarnessError, match="group 'pretrained' is not one of target, realistic, procedural, white-box"):
        harness.evaluate(tiny_net(), tasks=["knn-digits"], preprocess=scale, out=tmp_path, group="pretrained")
    with pytest.raises(HarnessError, match="encoder name 'my net'"):
        harness.evaluate(tiny_net(), tasks=["knn-digits"], preprocess=scale, name="my net", out=tmp_path)
    with pytest.raises(HarnessError, match="encoders: expected an instance name or a harness.Encoder"):
        harness.run(encoders=[tiny_net()], tasks=["knn-digits"], out=tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


def test_a_timm_model_without_preprocess_gets_the_timm_encoders_preprocessing():
    """A timm module (it carries `pretrained_cfg`) needs no `preprocess`: it gets its data
    config's eval transform, as the `timm` encoder plugin computes on the same weights,
    and its patch features come from forward_intermediates."""
    pytest.importorskip("timm")
    plugin = harness.get_encoder("timm", model="test_vit", pretrained=False)
    plugin.prepare()
    encoder = harness.as_encoder(copy.deepcopy(plugin.torch_module()), name="test-vit")
    images = torch.randint(0, 256, (3, 3, 40, 56), dtype=torch.uint8)
    torch.testing.assert_close(encoder.embed(images), plugin.embed(images))
    torch.testing.assert_close(encoder.embed_patches(images), plugin.embed_patches(images))
    assert encoder.supports_patches and encoder.input_size == plugin.input_size
    assert encoder.describe()["params"]["preprocess"]["attributes"]["crop"] == "True"


def test_the_key_follows_the_weights_of_one_encoder_object():
    net = tiny_net()
    encoder = harness.as_encoder(net, scale)
    before, original = encoder.key, net[0].bias[3].item()
    with torch.no_grad():
        net[0].bias[3] += 1.0
    changed = encoder.key
    with torch.no_grad():
        net[0].bias[3] = original
    assert changed != before and encoder.key == before
    net[0].weight = torch.nn.Parameter(net[0].weight.detach().clone())  # a new tensor, the same values
    assert encoder.key == before
    net[0].weight.data = net[0].weight.data * 2
    assert encoder.key != before
