"""The `timm` encoder: any timm model by name, hub weights through the Hugging Face cache
or a local checkpoint, preprocessing from the model's data config.

Nothing touches the network: HF_HUB_OFFLINE=1 throughout. The "hub" is a folder laid
out as huggingface_hub's cache (`models--timm--NAME/refs/main` naming a commit,
`snapshots/<commit>/model.safetensors`) with small randomly initialised models saved
into it, and HF_HUB_CACHE points at it; huggingface_hub then resolves the files offline
exactly as it does for downloaded ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import harness
from harness.config.registry import use_registry
from harness.datasets import open_dataset
from harness.errors import HarnessError
from helpers import cli

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RESNET_REPO = "timm/resnet18.a1_in1k"  # resnet18's default tag
VIT_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # vit_tiny_patch16_224's; its mean and std are 0.5
REGISTRY = """
datasets:
  synthetic-scenes: {format: synthetic-scenes, options: {size: 64, train: 10, val: 6}}
encoders:
  timm-resnet18: {plugin: timm, params: {model: resnet18.a1_in1k, img_size: 32}}
  timm-resnet18-64: {plugin: timm, params: {model: resnet18.a1_in1k, img_size: 64}}  # a 2 x 2 map
  timm-vit-tiny: {plugin: timm, params: {model: vit_tiny_patch16_224, img_size: 32}}
  timm-resnet34: {plugin: timm, params: {model: resnet34.a1_in1k, img_size: 32}}  # never put in the cache
  timm-resnet101: {plugin: timm, params: {model: resnet101.a1_in1k, img_size: 32}}  # nor this one
  timm-hf-missing: {plugin: timm, params: {model: "hf-hub:someone/missing-vit"}}   # nor this repo's config.json
  timm-vit-sweep:  # a 3-block ViT on a 4 x 4 grid, random weights, every block swept
    {plugin: timm, params: {model: vit_tiny_patch16_224, pretrained: false, img_size: 32, model_kwargs: {depth: 3, patch_size: 8}, layers: all}}
  timm-vit-block2:  # its last block alone
    {plugin: timm, params: {model: vit_tiny_patch16_224, pretrained: false, img_size: 32, model_kwargs: {depth: 3, patch_size: 8}, layer: 2}}
tasks:
  coco-r2-synthetic: {plugin: coco-r2, params: {datasets: [synthetic-scenes], n_images: 6, photographs: []}}
"""


def seeded_model(name: str, seed: int, **kwargs) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def put_in_hub_cache(cache: Path, repo: str, model: torch.nn.Module) -> Path:
    """Save `model` as huggingface_hub would have cached `repo`'s model.safetensors."""
    from safetensors.torch import save_file

    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tiny models in a hub-cache folder (classifiers included, as on the hub), a
    torch checkpoint of the ResNet and the registry overlay."""
    root = tmp_path_factory.mktemp("timm")
    cache = root / "hf-cache"
    resnet = seeded_model("resnet18", 1)
    vit = seeded_model("vit_tiny_patch16_224", 2, img_size=32)
    checkpoint = root / "resnet18-local.pth"
    torch.save({"state_dict": seeded_model("resnet18", 3).state_dict()}, checkpoint)
    registry = root / "registry.yaml"
    registry.write_text(REGISTRY)
    return {
        "root": root,
        "cache": cache,
        "registry": registry,
        "resnet": resnet,
        "vit": vit,
        "resnet_file": put_in_hub_cache(cache, RESNET_REPO, resnet),
        "vit_file": put_in_hub_cache(cache, VIT_REPO, vit),
        "checkpoint": checkpoint,
    }


@pytest.fixture(autouse=True)
def offline_hub(hub: dict, monkeypatch: pytest.MonkeyPatch, _fresh_registry: None) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub reads both when imported
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub["cache"]))
    use_registry(hub["registry"])


def images(n: int = 5, height: int = 40, width: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, height, width), dtype=np.uint8))


# ---------------------------------------------------------------- weights and features
@pytest.mark.parametrize("name", ["resnet18", "resnet18.a1_in1k"])
def test_resnet_by_name_is_the_cached_hub_model(hub: dict, name: str) -> None:
    encoder = harness.get_encoder("timm", model=name, img_size=32)
    batch = images()
    features, patches = encoder.embed(batch), encoder.embed_patches(batch)
    reference = hub["resnet"]
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(encoder.preprocess(batch)), pre_logits=True)
        expected_map = reference.forward_features(encoder.preprocess(batch, crop=False))
    assert features.shape == (5, 512) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(patches, expected_map.permute(0, 2, 3, 1), rtol=0, atol=1e-5)
    assert encoder.describe()["params"]["weights_sha256"] == sha256(hub["resnet_file"])
    assert encoder.architecture == "resnet18 32px" and encoder.input_size == 32


def test_vit_tokens_are_the_cls_token_and_the_normed_patch_tokens(hub: dict) -> None:
    encoder = harness.get_encoder("timm-vit-tiny")
    batch = images()
    features, patches = encoder.embed(batch), encoder.embed_patches(batch)
    reference = hub["vit"]
    with torch.inference_mode():
        cls = reference.forward_features(encoder.preprocess(batch))[:, 0]
        tokens = reference.forward_features(encoder.preprocess(batch, crop=False))[:, reference.num_prefix_tokens :]
    torch.testing.assert_close(features, cls, rtol=0, atol=1e-5)
    torch.testing.assert_close(patches, tokens.reshape(5, 2, 2, -1), rtol=0, atol=1e-5)
    assert encoder.describe()["params"]["weights_sha256"] == sha256(hub["vit_file"])


def test_bfloat16_precision_is_the_same_forward_pass_under_autocast(hub: dict) -> None:
    encoder, exact = harness.get_encoder("timm-vit-tiny", precision="bfloat16"), harness.get_encoder("timm-vit-tiny")
    batch = images()
    reference = hub["vit"]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        cls = reference.forward_features(encoder.preprocess(batch))[:, 0].float()
    features = encoder.embed(batch)
    torch.testing.assert_close(features, cls, rtol=0, atol=1e-5)
    assert (features - exact.embed(batch)).abs().max() > 1e-3 and encoder.key != exact.key


def test_checkpoint_gives_its_weights_and_its_digest_not_its_path(hub: dict) -> None:
    local = harness.get_encoder("timm", model="resnet18", img_size=32, checkpoint=str(hub["checkpoint"]))
    from_hub = harness.get_encoder("timm", model="resnet18", img_size=32)
    batch = images()
    reference = seeded_model("resnet18", 3)
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(local.preprocess(batch)), pre_logits=True)
    torch.testing.assert_close(local.embed(batch), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(local.embed(batch), from_hub.embed(batch))
    described = local.describe()
    assert described["params"]["weights_sha256"] == sha256(hub["checkpoint"])
    assert str(hub["root"]) not in json.dumps(described) and local.key != from_hub.key
    moved = hub["root"] / "elsewhere.pth"
    moved.write_bytes(hub["checkpoint"].read_bytes())
    assert harness.get_encoder("timm", model="resnet18", img_size=32, checkpoint=str(moved)).key == local.key


def test_layer_picks_a_feature_level(hub: dict) -> None:
    batch = images(3)
    resnet = harness.get_encoder("timm", model="resnet18", img_size=32, layer=2)  # stem, layer1, layer2
    vit = harness.get_encoder("timm-vit-tiny", layer=1)  # blocks 0 and 1, then the final norm
    r, v = hub["resnet"], hub["vit"]
    with torch.inference_mode():
        x = r.maxpool(r.act1(r.bn1(r.conv1(resnet.preprocess(batch, crop=False)))))
        stage2 = r.layer2(r.layer1(x))
        x = r.maxpool(r.act1(r.bn1(r.conv1(resnet.preprocess(batch)))))
        pooled = r.layer2(r.layer1(x)).mean(dim=(2, 3))
        tokens = v.patch_embed(vit.preprocess(batch))
        cls = v.norm(v.blocks[1](v.blocks[0](v.norm_pre(v._pos_embed(tokens)))))[:, 0]
    torch.testing.assert_close(resnet.embed_patches(batch), stage2.permute(0, 2, 3, 1), rtol=0, atol=1e-5)
    torch.testing.assert_close(resnet.embed(batch), pooled, rtol=0, atol=1e-5)
    torch.testing.assert_close(vit.embed(batch), cls, rtol=0, atol=1e-5)
    assert vit.key != harness.get_encoder("timm-vit-tiny").key
    with pytest.raises(HarnessError, match="layer 7 is outside resnet18's 5 feature levels"):
        harness.get_encoder("timm", model="resnet18", layer=7).prepare()


def test_layers_sweeps_the_feature_levels_and_excludes_layer() -> None:
    sweep = harness.get_encoder("timm-vit-sweep")
    assert sweep.variants() == {f"layer{i}": {"layer": i, "layers": None} for i in range(3)}
    ends = harness.get_encoder("timm-vit-sweep", layers=[-1, 0]).variants()
    assert ends == {"layer0": {"layer": 0, "layers": None}, "layer2": {"layer": 2, "layers": None}}
    assert harness.get_encoder("timm", model="resnet18", layers="all").variants().keys() == {f"layer{i}" for i in range(5)}
    assert harness.get_encoder("timm-vit-block2").variants() == {}
    with pytest.raises(HarnessError, match=r"`layers` \[3\] outside vit_tiny_patch16_224's 3 feature levels"):
        harness.get_encoder("timm-vit-sweep", layers=[0, 3]).variants()
    with pytest.raises(HarnessError, match="`layer` picks one feature level and `layers` sweeps several"):
        harness.get_encoder("timm-vit-sweep", layer=1)
    with pytest.raises(HarnessError, match="runner.*set `layer` instead"):
        sweep.embed(images(1))


# ---------------------------------------------------------------- preprocessing
def test_mean_and_std_come_from_the_models_config() -> None:
    grey = torch.full((2, 3, 40, 48), 200, dtype=torch.uint8)
    vit = harness.get_encoder("timm-vit-tiny").preprocess(grey)
    resnet = harness.get_encoder("timm", model="resnet18", img_size=32).preprocess(grey)
    assert vit.shape == resnet.shape == (2, 3, 32, 32)
    torch.testing.assert_close(vit, torch.full_like(vit, (200 / 255 - 0.5) / 0.5), rtol=0, atol=1e-6)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    expected = ((200 / 255 - mean) / std).view(1, 3, 1, 1).expand_as(resnet)
    torch.testing.assert_close(resnet, expected, rtol=0, atol=1e-5)


def test_resize_and_centre_crop_follow_crop_pct() -> None:
    batch = images(2, 40, 48)
    # 32 / 0.8 = 40: the shorter side is already 40, so the crop is the exact centre 32 x 32
    encoder = harness.get_encoder("timm-vit-tiny", crop_pct=0.8)
    expected = (batch[:, :, 4:36, 8:40].float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(encoder.preprocess(batch), expected, rtol=0, atol=1e-6)
    assert encoder.key != harness.get_encoder("timm-vit-tiny").key


def test_preprocessing_matches_timms_own_eval_transform() -> None:
    """Against timm's PIL transform (which rounds to uint8 after resizing and uses PIL's
    bicubic): the same geometry, within a few grey levels."""
    from PIL import Image
    from timm.data import create_transform

    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.interpolate(torch.from_numpy(rng.uniform(0, 255, (3, 3, 6, 8))).float(), size=(60, 80), mode="bilinear")
    batch = smooth.round().clamp(0, 255).to(torch.uint8)
    encoder = harness.get_encoder("timm", model="resnet18", img_size=32)
    encoder.prepare()
    transform = create_transform(**encoder.data_config)
    expected = torch.stack([transform(Image.fromarray(image.permute(1, 2, 0).numpy())) for image in batch])
    ours = encoder.preprocess(batch)
    assert ours.shape == expected.shape == (3, 3, 32, 32)
    assert (ours - expected).abs().mean() < 0.02 and (ours - expected).abs().max() < 0.15


# ---------------------------------------------------------------- errors
def test_a_model_missing_offline_names_the_model_the_cache_and_the_remedy(hub: dict) -> None:
    encoder = harness.get_encoder("timm", model="resnet50.a1_in1k")
    assert encoder.describe()["params"]["weights_sha256"] == "missing:resnet50.a1_in1k"
    with pytest.raises(HarnessError) as caught:
        encoder.prepare()
    message = str(caught.value)
    assert "'resnet50.a1_in1k'" in message and str(hub["cache"]) in message
    assert "huggingface-cli download timm/resnet50.a1_in1k" in message and "checkpoint:" in message
    with pytest.raises(HarnessError, match="resnet19.*did you mean resnet18"):
        harness.get_encoder("timm", model="resnet19").prepare()
    with pytest.raises(HarnessError, match="nowhere.pth does not exist"):
        harness.get_encoder("timm", model="resnet18", checkpoint=str(hub["root"] / "nowhere.pth")).prepare()
    wrong = hub["root"] / "vit-weights.safetensors"
    wrong.write_bytes(hub["vit_file"].read_bytes())
    with pytest.raises(HarnessError, match="vit-weights.safetensors does not fit timm model 'resnet18'"):
        harness.get_encoder("timm", model="resnet18", checkpoint=str(wrong)).prepare()


class UnreachableHub:
    """huggingface_hub's `hf_hub_download` where the hub does not answer, as huggingface_hub
    behaves once its retries are spent: a cached file is returned, a file not in the cache
    is a LocalEntryNotFoundError. Requests are recorded as (repo, file name, whether it
    went to the network)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import huggingface_hub

        self.cached = huggingface_hub.hf_hub_download  # offline (the module's fixture): the cache alone
        self.requests: list[tuple[str, str, bool]] = []
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self)

    def __call__(self, repo: str, filename: str, *, revision: str | None = None, local_files_only: bool = False) -> str:
        self.requests.append((repo, filename, not local_files_only))
        return self.cached(repo, filename, revision=revision, local_files_only=True)

    def network(self) -> list[tuple[str, str, bool]]:
        return [request for request in self.requests if request[2]]


def test_a_dry_run_fetches_nothing_and_a_run_asks_an_unreachable_hub_once(
    hub: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture,
) -> None:
    from harness.cli import main
    from harness.downloads import no_downloads
    from harness_plugins.encoders import _timm_hub

    for memory in ("_HUB_FILES_FOUND", "_SILENT_HUBS"):  # as in a new process (the suite runs offline throughout)
        monkeypatch.setattr(_timm_hub, memory, type(getattr(_timm_hub, memory))())
    unreachable = UnreachableHub(monkeypatch)
    with no_downloads():  # a cached model is found without the network, and keyed as in a run
        key = harness.get_encoder("timm-resnet18").key
    assert unreachable.requests == [(RESNET_REPO, "model.safetensors", False)]
    assert harness.get_encoder("timm-resnet18").key == key
    unreachable.requests.clear()
    monkeypatch.chdir(tmp_path)
    both = ["--registry", str(hub["registry"]), "run", "--encoders", "timm-resnet18,timm-resnet34,timm-resnet101", "--tasks", "knn-default"]
    assert main([*both, "--dry-run"]) == 0
    assert ": 9 cells, 0 already in" in capsys.readouterr().out
    assert unreachable.requests and unreachable.network() == []

    unreachable.requests.clear()
    main([*both, "--out", "out"])
    # three cells of each missing model, each keyed and prepared: the network asked once, for
    # the first model's first file name; the rest looked for in the cache alone (the cached
    # model's file was found above)
    missing_repo = "timm/resnet34.a1_in1k"
    assert unreachable.network() == [(missing_repo, "model.safetensors", True)]
    assert (missing_repo, "pytorch_model.bin", False) in unreachable.requests
    assert ("timm/resnet101.a1_in1k", "model.safetensors", False) in unreachable.requests
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert {r["status"] for r in records if r["encoder"] == "timm-resnet18"} == {"ok"}
    assert {r["keys"]["encoder"] for r in records if r["encoder"] == "timm-resnet18"} == {key}
    for model in ("resnet34.a1_in1k", "resnet101.a1_in1k"):
        missing = [r["message"] for r in records if r["encoder"] == f"timm-{model.split('.')[0]}"]
        assert len(missing) == 3 and all(f"'{model}'" in m and "the hub cannot be reached" in m for m in missing)
        assert all(f"huggingface-cli download timm/{model}" in m for m in missing)


def test_an_hf_hub_repo_missing_from_the_cache_fails_its_own_cells_only(hub: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    both = ["--registry", str(hub["registry"]), "run", "--encoders", "timm-hf-missing,timm-resnet18", "--tasks", "knn-digits"]
    assert main([*both, "--dry-run"]) == 0  # planned, unpriced
    assert re.search(r"eval timm-hf-missing / knn-digits / digits +local +1797 +\?", capsys.readouterr().out)
    assert main([*both, "--out", "out"]) == 2  # a cell failed on input
    records = {r["encoder"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines()) if r["headline"] or r["status"] == "error"}
    assert records["timm-resnet18"]["status"] == "ok"
    assert records["timm-hf-missing"]["status"] == "error" and "huggingface-cli download someone/missing-vit" in records["timm-hf-missing"]["message"]


# ---------------------------------------------------------------- through the runner
def test_resnet_and_vit_run_knn_default(hub: dict) -> None:
    """A fresh process, offline by its environment alone."""
    out = hub["root"] / "out-knn"
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub["cache"])}
    result = cli(
        "--registry", str(hub["registry"]), "run", "--encoders", "timm-resnet18,timm-vit-tiny",
        "--tasks", "knn-default", "--out", str(out), env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for name in ("timm-resnet18", "timm-vit-tiny"):
        mine = [r for r in records if r["encoder"] == name]
        assert {r["dataset"] for r in mine} == {"digits", "lfw-faces", "textures"}
        assert all(r["status"] == "ok" for r in mine), [r["message"] for r in mine if r["status"] != "ok"]
        assert {r["keys"]["encoder"] for r in mine} == {harness.get_encoder(name).key}
    # the digits top-1 is scikit-learn's weighted cosine kNN on the encoder's own embeddings
    # (the ViT's: a random ResNet's pooled ReLU features are all within 1e-4 in cosine,
    # where float rounding decides the neighbours)
    from sklearn.neighbors import KNeighborsClassifier

    digits = open_dataset("digits", use_registry(hub["registry"]).dataset("digits"))
    encoder = harness.get_encoder("timm-vit-tiny")
    features = {s: encoder.embed(torch.from_numpy(getattr(digits, s).images)).numpy().astype(np.float64) for s in ("train", "test")}
    knn = KNeighborsClassifier(20, weights=lambda d: np.exp((1.0 - d) / 0.07), metric="cosine", algorithm="brute")
    knn.fit(features["train"], digits.train.labels)
    top1 = 100.0 * float((knn.predict(features["test"]) == digits.test.labels).mean())
    ours = [r for r in records if (r["encoder"], r["dataset"]) == ("timm-vit-tiny", "digits") and r["headline"]]
    assert len(ours) == 1 and ours[0]["value"] == pytest.approx(top1, abs=100.0 / len(digits.test))


def test_resnet_and_vit_run_segmentation_r2(hub: dict, tmp_path: Path) -> None:
    from harness.runner.cells import Runner

    runner = Runner(use_registry(hub["registry"]), out_dir=tmp_path, device="cpu", progress=False)
    records = runner.run(runner.select(encoders="timm-resnet18-64,timm-vit-tiny", tasks="coco-r2-synthetic"))
    for name in ("timm-resnet18-64", "timm-vit-tiny"):
        headline = [r for r in records if r.encoder == name and r.headline]
        assert len(headline) == 1 and headline[0].status == "ok", headline
        assert headline[0].params["nan_images"] < 6 and math.isfinite(headline[0].value) and 0 <= headline[0].value <= 100


def test_layers_all_gives_one_row_per_block_and_the_depth_figure(hub: dict, tmp_path: Path) -> None:
    records = harness.run(
        encoders=["timm-vit-sweep", "timm-vit-block2"], tasks=["knn-digits"], out=tmp_path, registry=hub["registry"], limit=200
    )
    headline = {r.encoder: r for r in records if r.headline}
    assert sorted(headline) == ["timm-vit-block2", "timm-vit-sweep.layer0", "timm-vit-sweep.layer1", "timm-vit-sweep.layer2"]
    assert all(r.status == "ok" for r in headline.values()), [r.message for r in headline.values()]
    assert headline["timm-vit-sweep.layer2"].value == headline["timm-vit-block2"].value
    assert headline["timm-vit-sweep.layer2"].outcomes == headline["timm-vit-block2"].outcomes
    assert len({headline[f"timm-vit-sweep.layer{i}"].outcomes for i in range(3)}) > 1  # the levels differ
    assert (tmp_path / "figures" / "depth_knn-digits.png").is_file()
    board = (tmp_path / "LEADERBOARD.md").read_text()
    assert "## Metric against depth" in board and "figures/depth_knn-digits.png" in board
    table = board.split("## Metric against depth")[1]
    assert "| timm-vit-sweep " in table and "timm-vit-block2" not in table
