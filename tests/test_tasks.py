"""Tasks (knn, linear, nights, medmnist) on fixtures in each published format, checked
against independent computations: scikit-learn's kNN and logistic regression, a hand
numpy 2AFC, and the medmnist package's own Evaluator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import harness
from harness.cli import main
from harness.runner.context import CellContext, RunContext
from harness.kinds import Encoder
from harness.config.registry import load_registry
from test_datasets import make_cub, make_flowers, make_food, make_imagefolder, make_medmnist, make_nights, protocol_crop

T = 0.07


def write_registry(tmp_path, datasets: str, tasks: str, extra: str = "") -> str:
    path = tmp_path / "registry.yaml"
    path.write_text(f"datasets:\n{datasets}\ntasks:\n{tasks}\n{extra}")
    return str(path)


def run_cli(registry: str, tasks: str, out, encoders: str = "rgb") -> list[dict]:
    assert main(["--registry", registry, "run", "--encoders", encoders, "--tasks", tasks, "--out", str(out)]) == 0
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def pick(records, metric, **params):
    found = [r for r in records if r["metric"] == metric and all(r["params"].get(k) == v for k, v in params.items())]
    assert len(found) == 1, (metric, params, len(found))
    return found[0]


def cell_context(registry_path, task, encoder, dataset, out) -> CellContext:
    run = RunContext(registry=load_registry(registry_path), device="cpu", out_dir=out, progress=False)
    return CellContext(run=run, task=task, encoder=encoder, dataset=dataset, cell_key="test")


def rgb_encoder():
    encoder = harness.get_encoder("rgb")
    encoder.prepare()
    return encoder


def sklearn_knn_scores(train, train_labels, test, k, vote, num_classes):
    """Class vote mass of the k nearest (cosine) train rows, by scikit-learn."""
    from sklearn.neighbors import NearestNeighbors

    distances, index = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(train).kneighbors(test)
    weights = np.exp((1.0 - distances) / T) if vote == "weighted" else np.ones_like(distances)
    scores = np.zeros((len(test), num_classes))
    for row in range(len(test)):
        np.add.at(scores[row], train_labels[index[row]], weights[row])
    return scores


# -------------------------------------------------------------------------------- knn
def test_knn_on_imagefolder_equals_sklearn(tmp_path):
    from sklearn.neighbors import KNeighborsClassifier

    root = make_imagefolder(tmp_path / "folder", n_train=8, n_test=5, seed=3)
    registry = write_registry(tmp_path, f"  mine: {{format: imagefolder, root: {root}, options: {{crop: 16}}}}",
                              "  knn-mine: {plugin: knn, params: {datasets: [mine], ks: [10, 1, 3, 5, 3]}}")
    records = run_cli(registry, "knn-mine", tmp_path / "out")
    # independent pipeline: PIL decoding by hand, the same encoder, scikit-learn's kNN
    encoder = rgb_encoder()

    def features(split):
        paths = sorted((root / split).glob("*/*.*"))
        paths = [p for p in paths if p.suffix in (".png", ".jpg")]
        images = torch.from_numpy(np.stack([protocol_crop(p, 16, 18) for p in paths]))
        labels = np.array([["cat", "dog", "owl"].index(p.parent.name) for p in paths])
        return encoder.embed(images).numpy().astype(np.float64), labels

    train, train_labels = features("train")
    test, test_labels = features("test")
    for k in (1, 3, 5, 10, 20):  # 20: the headline k, reported although ks leaves it out
        weighted = KNeighborsClassifier(k, weights=lambda d: np.exp((1.0 - d) / T), metric="cosine", algorithm="brute")
        majority = KNeighborsClassifier(k, weights="uniform", metric="cosine", algorithm="brute")
        for vote, model in (("weighted", weighted), ("majority", majority)):
            expected = 100.0 * (model.fit(train, train_labels).predict(test) == test_labels).mean()
            assert pick(records, "top1", k=k, vote=vote)["value"] == pytest.approx(expected, abs=1e-9), (k, vote)
    assert pick(records, "top1", k=10, vote="majority")["n"] == 15
    assert [r["params"] for r in records if r["headline"]] == [{"k": 20, "vote": "weighted"}]


def test_task_parameters_are_checked_by_name_and_type():
    from harness.kinds import ParamsError

    with pytest.raises(ParamsError, match=r"kz.*did you mean 'ks'"):
        harness.get_task("knn", kz=5)
    with pytest.raises(ParamsError, match="temperature") as error:
        harness.get_task("knn", temperature="abc")
    assert [path for path, _ in error.value.problems] == ["temperature"]
    with pytest.raises(ParamsError, match="protocol"):
        harness.get_task("linear", protocol="svm")
    with pytest.raises(ParamsError, match="vote"):
        harness.get_task("privacy", vote="unanimous")
    with pytest.raises(ParamsError, match="val_fraction"):
        harness.get_task("linear", val_fraction=1.0)
    knn = harness.get_task("knn", ks=[5, 1], headline_k=7)
    assert knn.params.reported_ks == [1, 5, 7] and knn.params.temperature == 0.07
    assert harness.get_task("medmnist", ks=[3]).params.reported_ks == [3, 20]


def test_knn_runs_on_every_classification_format(tmp_path):
    labels, setid = make_flowers(tmp_path / "flowers")
    entries = make_cub(tmp_path / "cub")
    make_food(tmp_path / "food")
    make_imagefolder(tmp_path / "imagenet", classes=("n01", "n02"), test_dir="val")
    make_medmnist(tmp_path / "toymnist.npz", classes=3)
    datasets = "\n".join(
        f"  {name}: {{format: {name}, root: {tmp_path / folder}, options: {{crop: 12}}}}"
        for name, folder in (("flowers102", "flowers"), ("cub200", "cub"), ("food101", "food"), ("imagenet", "imagenet"))
    ) + f"\n  toymnist: {{format: medmnist, root: {tmp_path / 'toymnist.npz'}}}"
    names = "[flowers102, cub200, food101, imagenet, toymnist]"
    registry = write_registry(tmp_path, datasets, f"  knn-real: {{plugin: knn, params: {{datasets: {names}, ks: [1, 5]}}}}")
    records = run_cli(registry, "knn-real", tmp_path / "out")
    assert all(r["status"] == "ok" for r in records)
    sizes = {r["dataset"]: r["n"] for r in records if r["metric"] == "top1"}
    assert sizes == {"flowers102": len(setid["valid"]), "cub200": sum(1 for e in entries.values() if e[2] == 0),
                     "food101": 6, "imagenet": 6, "toymnist": 15}
    # the class colours make these easy: a working reader gives high accuracy
    top1 = [r["value"] for r in records if r["metric"] == "top1" and r["params"]["k"] == 1 and r["dataset"] != "toymnist"]
    assert min(top1) >= 80


def test_missing_root_is_skipped_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWERS102_ROOT", raising=False)
    registry = write_registry(
        tmp_path, f"  flowers102: {{format: flowers102, root: {tmp_path / 'absent'}, env: FLOWERS102_ROOT}}",
        "  knn-flowers: {plugin: knn, params: {datasets: [flowers102]}}",
    )
    (record,) = run_cli(registry, "knn-flowers", tmp_path / "out")
    assert record["status"] == "skipped"
    assert "datasets.flowers102.root" in record["message"] and "FLOWERS102_ROOT" in record["message"]


# ----------------------------------------------------------------------------- linear
def test_linear_logistic_equals_sklearn(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from harness.datasets import open_dataset
    from harness.config.schema import DatasetSpec

    registry = write_registry(tmp_path, "  lfw-faces: {format: lfw-faces}\n  digits: {format: digits}",
                              "  linear-small: {plugin: linear, params: {datasets: [lfw-faces, digits]}}")
    all_records = run_cli(registry, "linear-small", tmp_path / "out")
    encoder = rgb_encoder()
    selected = {}
    for dataset in ("lfw-faces", "digits"):
        records = [r for r in all_records if r["dataset"] == dataset]
        data = open_dataset(dataset, DatasetSpec(format=dataset))
        train = encoder.embed(torch.from_numpy(data.train.images)).numpy()
        test = encoder.embed(torch.from_numpy(data.test.images)).numpy()
        fit, val = train_test_split(np.arange(len(train)), test_size=0.2, stratify=data.train.labels, random_state=0)
        correct = {}
        with threadpool_limits(1):
            for c in (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0):
                model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(train[fit], data.train.labels[fit])
                correct[c] = int((model.predict(train[val]) == data.train.labels[val]).sum())
                assert pick(records, "val_top1", C=c)["value"] == pytest.approx(100.0 * correct[c] / len(val))
            # the rule in whole validation samples: the smallest C at most one sample below the best
            best_c = min(c for c in correct if correct[c] >= max(correct.values()) - 1)
            model = make_pipeline(StandardScaler(), LogisticRegression(C=best_c, max_iter=1000)).fit(train, data.train.labels)
        selected[dataset] = pick(records, "selected_C")["value"]
        assert selected[dataset] == best_c
        top1 = pick(records, "top1")
        assert top1["headline"] and top1["value"] == pytest.approx(100.0 * (model.predict(test) == data.test.labels).mean())
    assert selected == {"lfw-faces": 0.1, "digits": 0.1}  # digits: C = 100 is one sample better on validation


def test_select_c_takes_the_smallest_c_within_one_validation_sample():
    from harness_plugins.tasks.linear import select_c

    cs = [1e-3, 1e-2, 1e-1, 1.0]
    assert select_c(cs, [0.5, 0.6, 0.8, 0.7], n_val=10) == 1e-1  # the best alone
    assert select_c(cs, [0.5, 0.8, 0.8, 0.8], n_val=10) == 1e-2  # exact ties: the smallest C
    assert select_c(cs, [0.5, 0.7, 0.8, 0.6], n_val=10) == 1e-2  # one sample below the best
    assert select_c(cs, [0.5, 0.6, 0.8, 0.7], n_val=5) == 1e-2  # one sample is 0.2 here
    assert select_c(cs, [0.5, 0.69, 0.8, 0.7], n_val=10) == 1e-1  # just over one sample below
    assert select_c(cs, [0.79999999999, 0.8, 0.1, 0.1], n_val=1000) == 1e-3  # a rounding-sized near tie
    assert select_c([10.0, 0.1, 1.0], [0.9, 0.9, 0.2], n_val=10) == 0.1  # the smallest C, not the first listed
    assert select_c([1.0], [0.0], n_val=3) == 1.0


def test_linear_dino_protocol_on_a_vit(tmp_path):
    from harness_plugins.tasks.linear import augmented_batches, vit_last_blocks_features

    root = make_imagefolder(tmp_path / "folder", n_train=4, n_test=2)
    registry = write_registry(
        tmp_path, f"  mine: {{format: imagefolder, root: {root}, options: {{crop: 16}}}}",
        "  linear-dino: {plugin: linear, params: {protocol: dino, epochs: 3, batch_size: 8, lr: 0.5, datasets: [mine]}}",
        "encoders:\n  vit-micro: {plugin: random-init, params: {arch: vit_tiny_patch16_224, img_size: 16, patch_size: 8, model_kwargs: {depth: 5}}}\n",
    )
    records = run_cli(registry, "linear-dino", tmp_path / "out", encoders="vit-micro,rgb")
    vit = [r for r in records if r["encoder"] == "vit-micro"]
    rgb = [r for r in records if r["encoder"] == "rgb"]
    assert pick(vit, "top1")["params"] == {"protocol": "dino", "features": "cls-last4", "epochs": 3}
    assert pick(vit, "top1")["headline"] and np.isfinite(pick(vit, "train_loss")["value"])
    assert pick(rgb, "top1")["params"]["features"] == "embed" and "no ViT blocks" in pick(rgb, "top1")["message"]
    # same seed, same result
    again = run_cli(registry, "linear-dino", tmp_path / "again", encoders="vit-micro")
    assert pick(again, "top1")["value"] == pick(vit, "top1")["value"]

    # the features are DINO's: the final-norm CLS token of each of the last 4 blocks,
    # concatenated; the encoder's `layer` param gives each block's CLS token on its own
    harness.config.registry.use_registry(registry)
    encoder = harness.get_encoder("vit-micro")
    encoder.prepare()
    images = torch.randint(0, 256, (3, 3, 20, 18), dtype=torch.uint8)
    features = vit_last_blocks_features(encoder, 4)(images)
    per_block = [harness.get_encoder("vit-micro", layer=layer).embed(images) for layer in (1, 2, 3, 4)]
    assert features.shape == (3, 4 * encoder.model.embed_dim)
    assert torch.allclose(features, torch.cat(per_block, dim=-1), atol=1e-5)

    # every training image once per epoch, augmented to the split's size, reproducibly
    from harness.datasets import open_dataset
    from harness.config.schema import DatasetSpec

    split = open_dataset("mine", DatasetSpec(format="imagefolder", root=str(root), options={"crop": 16})).train
    epoch = list(augmented_batches(split, 5, seed=0, epoch=1))
    assert sorted(np.concatenate([labels.numpy() for _, labels in epoch]).tolist()) == sorted(split.labels.tolist())
    assert all(images.shape[1:] == (3, 16, 16) and images.dtype == torch.uint8 for images, _ in epoch)
    assert torch.equal(epoch[0][0], next(augmented_batches(split, 5, seed=0, epoch=1))[0])
    assert not torch.equal(epoch[0][0], next(augmented_batches(split, 5, seed=0, epoch=2))[0])


# ----------------------------------------------------------------------------- NIGHTS
def hand_two_afc(d0, d1, p):
    return float(np.mean(np.where(d0 < d1, 1 - p, np.where(d1 < d0, p, 0.5))))


def test_nights_2afc_equals_hand_computation(tmp_path):
    import pandas

    rows = make_nights(tmp_path / "nights")
    registry = write_registry(tmp_path, f"  nights: {{format: nights, root: {tmp_path / 'nights'}, options: {{size: 32}}}}",
                              "  nights: {plugin: nights}")
    out = tmp_path / "out"
    records = run_cli(registry, "nights", out)
    encoder = rgb_encoder()

    def embed(rel):
        image = Image.open(tmp_path / "nights" / rel).convert("RGB").resize((32, 32), Image.BICUBIC)
        return encoder.embed(torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())[None]).numpy()[0].astype(np.float64)

    def cosine_distance(a, b):
        return 1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    scores = {}
    for split, keep in {
        "val": lambda r: r["split"] == "val",
        "test_imagenet": lambda r: r["split"] == "test" and r["is_imagenet"],
        "test_no_imagenet": lambda r: r["split"] == "test" and not r["is_imagenet"],
    }.items():
        chosen = [r for r in rows if keep(r) and r["votes"] >= 6]
        d0 = np.array([cosine_distance(embed(r["ref_path"]), embed(r["left_path"])) for r in chosen])
        d1 = np.array([cosine_distance(embed(r["ref_path"]), embed(r["right_path"])) for r in chosen])
        p = np.array([r["right_vote"] for r in chosen])
        record = pick(records, "2afc", split=split)
        assert record["value"] == pytest.approx(hand_two_afc(d0, d1, p), abs=1e-12)
        assert record["n"] == len(chosen) and record["headline"] == (split == "val")
        scores[split] = np.where(d0 < d1, 1 - p, np.where(d1 < d0, p, 0.5))
        saved = pandas.read_csv(out / "nights" / f"nights__nights__rgb__{split}.csv")
        assert saved.id.tolist() == [r["id"] for r in chosen] and np.allclose(saved.score, scores[split])
    total = np.concatenate([scores["test_imagenet"], scores["test_no_imagenet"]])
    assert pick(records, "2afc", split="test")["value"] == pytest.approx(total.mean())
    assert pick(records, "2afc_sem", split="val")["value"] == pytest.approx(scores["val"].std(ddof=1) / np.sqrt(8))
    assert (out / "figures" / "nights_2afc.png").is_file()
    assert "nights" in (out / "LEADERBOARD.md").read_text()


class MeanAbsoluteDifference(Encoder):
    """A white-box distance defined only pairwise (as PSNR and SSIM are)."""

    def embed(self, images):
        raise AssertionError("a pairwise encoder's embed must not be used by the nights task")

    def pairwise_distance(self, a, b):
        return (a.float() - b.float()).abs().mean(dim=(1, 2, 3)).numpy()


def test_nights_uses_pairwise_distance_when_defined(tmp_path):
    rows = make_nights(tmp_path / "nights")
    registry = write_registry(tmp_path, f"  nights: {{format: nights, root: {tmp_path / 'nights'}, options: {{size: 16}}}}",
                              "  nights: {plugin: nights, params: {batch_size: 3}}")
    harness.config.registry.use_registry(registry)
    task = harness.get_task("nights")
    encoder = MeanAbsoluteDifference("mad")
    records = task.run(encoder, cell_context(registry, task, encoder, "nights", tmp_path / "out"))

    def load(rel):
        return np.asarray(Image.open(tmp_path / "nights" / rel).convert("RGB").resize((16, 16), Image.BICUBIC), dtype=np.float64)

    val = [r for r in rows if r["split"] == "val" and r["votes"] >= 6]
    d0 = np.array([np.abs(load(r["ref_path"]) - load(r["left_path"])).mean() for r in val])
    d1 = np.array([np.abs(load(r["ref_path"]) - load(r["right_path"])).mean() for r in val])
    record = next(r for r in records if r.metric == "2afc" and r.params["split"] == "val")
    assert record.params["distance"] == "pairwise_distance"
    assert record.value == pytest.approx(hand_two_afc(d0, d1, np.array([r["right_vote"] for r in val])), abs=1e-12)


# --------------------------------------------------------------------------- MedMNIST
def medmnist_features(path, encoder):
    with np.load(path) as raw:
        arrays = {k: raw[k] for k in raw.files}

    def rgb(images):
        return torch.from_numpy(np.repeat(images[:, None], 3, axis=1) if images.ndim == 3 else images.transpose(0, 3, 1, 2).copy())

    return (encoder.embed(rgb(arrays["train_images"])).numpy().astype(np.float64),
            encoder.embed(rgb(arrays["test_images"])).numpy().astype(np.float64), arrays)


def test_medmnist_multiclass_equals_evaluator_functions(tmp_path):
    from medmnist.evaluator import getACC, getAUC

    path = tmp_path / "toymnist.npz"
    make_medmnist(path, n=(60, 10, 30), classes=4, size=8, rgb=True, seed=2)
    registry = write_registry(tmp_path, f"  toymnist: {{format: medmnist, root: {path}}}",
                              "  medmnist: {plugin: medmnist, params: {datasets: [toymnist], ks: [1, 5, 20]}}")
    out = tmp_path / "out"
    records = run_cli(registry, "medmnist", out)
    train, test, arrays = medmnist_features(path, rgb_encoder())
    for k in (1, 5, 20):
        for vote in ("weighted", "majority"):
            mass = sklearn_knn_scores(train, arrays["train_labels"][:, 0], test, k, vote, 4)
            scores = mass / mass.sum(axis=1, keepdims=True)
            assert pick(records, "acc", k=k, vote=vote)["value"] == pytest.approx(100 * getACC(arrays["test_labels"], scores, "multi-class"))
            assert pick(records, "auc", k=k, vote=vote)["value"] == pytest.approx(100 * getAUC(arrays["test_labels"], scores, "multi-class"))
    with np.load(out / "medmnist" / "medmnist__toymnist__rgb.npz") as saved:
        mass = sklearn_knn_scores(train, arrays["train_labels"][:, 0], test, 20, "weighted", 4)
        assert np.allclose(saved["scores"], mass / mass.sum(axis=1, keepdims=True), atol=1e-9)
    assert pick(records, "acc", k=20, vote="weighted")["headline"]


def test_medmnist_multilabel_equals_evaluator_functions(tmp_path):
    from medmnist.evaluator import getACC, getAUC

    path = tmp_path / "chestmnist.npz"
    make_medmnist(path, n=(80, 10, 40), multilabel=3, size=8, seed=4)
    registry = write_registry(tmp_path, f"  chestmnist: {{format: medmnist, root: {path}}}",
                              "  medmnist: {plugin: medmnist, params: {datasets: [chestmnist], ks: [7]}}")
    records = run_cli(registry, "medmnist", tmp_path / "out")
    train, test, arrays = medmnist_features(path, rgb_encoder())
    from sklearn.neighbors import NearestNeighbors

    distances, index = NearestNeighbors(n_neighbors=7, metric="cosine", algorithm="brute").fit(train).kneighbors(test)
    weights = np.exp((1.0 - distances) / T)
    scores = np.einsum("qk,qkl->ql", weights, arrays["train_labels"][index].astype(float)) / weights.sum(1, keepdims=True)
    task = "multi-label, binary-class"
    assert pick(records, "acc", k=7, vote="weighted")["value"] == pytest.approx(100 * getACC(arrays["test_labels"], scores, task))
    assert pick(records, "auc", k=7, vote="weighted")["value"] == pytest.approx(100 * getAUC(arrays["test_labels"], scores, task))


def test_medmnist_over_a_multi_label_table_equals_the_same_images_as_npz(tmp_path):
    """A CheXpert-style table (image, split, one 0/1 column per finding) read by the
    `table` format gives the MedMNIST task every number the .npz of the same images gives."""
    path = tmp_path / "chestmnist.npz"
    arrays = make_medmnist(path, n=(80, 10, 40), multilabel=3, size=8, seed=4)
    lines = ["Path,Split,Atelectasis,Edema,Effusion"]
    for split in ("train", "val", "test"):
        for i, (image, labels) in enumerate(zip(arrays[f"{split}_images"], arrays[f"{split}_labels"])):
            (tmp_path / "table" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(tmp_path / "table" / split / f"{i:03d}.png")
            lines.append(f"{split}/{i:03d}.png,{split}," + ",".join(f"{float(v):.1f}" for v in labels))
    (tmp_path / "table" / "labels.csv").write_text("\n".join(lines) + "\n")
    table = {"crop": 8, "resize": 8, "image_column": "Path", "split_column": "Split", "label_columns": ["Atelectasis", "Edema", "Effusion"], "multi_label": True}
    registry = write_registry(
        tmp_path, f"  chestmnist: {{format: medmnist, root: {path}}}\n  chest-table: {{format: table, root: {tmp_path / 'table'}, options: {json.dumps(table)}}}",
        "  medmnist-both: {plugin: medmnist, params: {datasets: [chestmnist, chest-table], ks: [1, 7]}}\n"
        "  medmnist-released-both: {plugin: medmnist, params: {datasets: [chestmnist, chest-table], protocol: released}}",
    )
    records = run_cli(registry, "medmnist-both,medmnist-released-both", tmp_path / "out")
    values = {}
    for record in records:
        assert record["status"] == "ok", record["message"]
        values.setdefault(record["dataset"], {})[(record["task"], record["metric"], json.dumps(record["params"], sort_keys=True))] = record["value"]
    assert len(values["chestmnist"]) == 15 and values["chest-table"] == pytest.approx(values["chestmnist"], abs=1e-9)
    saved = sorted(path.name for path in (tmp_path / "out" / "medmnist").iterdir())  # one file per task, dataset and encoder
    assert saved == [f"{task}__{dataset}__rgb.npz" for task in ("medmnist-both", "medmnist-released-both") for dataset in ("chest-table", "chestmnist")]


def test_medmnist_real_breastmnist_matches_the_evaluator(tmp_path, shared_data):
    from medmnist.evaluator import Evaluator

    folder = shared_data / "medmnist"
    registry = write_registry(tmp_path, f"  breastmnist: {{format: medmnist, root: {folder / 'breastmnist.npz'}}}",
                              "  medmnist: {plugin: medmnist, params: {datasets: [breastmnist]}}")
    out = tmp_path / "out"
    records = run_cli(registry, "medmnist", out)
    with np.load(out / "medmnist" / "medmnist__breastmnist__rgb.npz") as saved:
        scores = saved["scores"]
    assert scores.shape == (156, 2) and np.allclose(scores.sum(axis=1), 1.0)
    auc, acc = Evaluator("breastmnist", "test", size=28, root=str(folder)).evaluate(scores)
    headline = pick(records, "acc", k=20, vote="weighted")
    assert headline["headline"] and headline["value"] == pytest.approx(100 * acc, rel=1e-12)
    assert pick(records, "auc", k=20, vote="weighted")["value"] == pytest.approx(100 * auc, rel=1e-12)
    # and the scores themselves are the normalised vote mass, recomputed independently
    train, test, arrays = medmnist_features(folder / "breastmnist.npz", rgb_encoder())
    mass = sklearn_knn_scores(train, arrays["train_labels"][:, 0], test, 20, "weighted", 2)
    assert np.allclose(scores, mass / mass.sum(axis=1, keepdims=True), atol=1e-9)
    # Table 3, with the original paper's best row, as a figure
    assert (out / "figures" / "medmnist_table3.png").is_file()
    from harness_plugins.tasks.medmnist import MedMNISTTask
    import pandas

    table = MedMNISTTask.table3(pandas.DataFrame(records))
    assert table.row.tolist()[:2] == ["Best from original paper", "rgb"]
    assert table.breastmnist.tolist()[:2] == [86.3, pytest.approx(headline["value"])]


# ---------------------------------------------------------------------- paper numbers
def test_paper_numbers_line_up_with_records():
    from harness_plugins.tasks.medmnist import PAPER_DATASETS, MedMNISTTask
    from harness_plugins.tasks.nights import NightsTask

    nights = NightsTask.paper_numbers()
    assert set(nights.dataset) == {"nights"} and set(nights.metric) == {"2afc", "2afc_sem"}
    assert nights[(nights.paper_row == "S. KML") & (nights.metric == "2afc")].value.item() == 0.8244
    medmnist = MedMNISTTask.paper_numbers()
    assert set(medmnist.dataset) == set(PAPER_DATASETS) and set(medmnist.metric) == {"acc"}
    assert len(medmnist) == 10 * 9
    best = medmnist[medmnist.paper_row == "Best from original paper"].set_index("dataset").value
    assert best["pathmnist"] == 91.1 and best["organsmnist"] == 81.3
    assert medmnist[(medmnist.paper_row == "Random init.") & (medmnist.dataset == "tissuemnist")].value.item() == 44.27


def test_default_profile_datasets_run(tmp_path):
    registry = write_registry(
        tmp_path, "  lfw-faces: {format: lfw-faces}\n  textures: {format: textures}",
        "  knn-default: {plugin: knn, params: {datasets: [lfw-faces, textures]}}",
    )
    records = run_cli(registry, "knn-default", tmp_path / "out")
    headline = {r["dataset"]: r["value"] for r in records if r["headline"]}
    assert headline["lfw-faces"] > 75 and headline["textures"] > 100 / 7 + 20
