"""`harness compare`, and the `timm` encoder's `hf-hub:` names: one small DINO-style ViT
saved as the hub would hold it (safetensors and config.json in a folder laid out as the
Hugging Face cache, found by timm name and by `hf-hub:` repo) and as DINO saves a
training checkpoint (teacher and student, `backbone.` / `module.backbone.` prefixes),
then the two registry entries compared. Offline throughout (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import pytest
import torch

import harness
from harness.cli import main
from harness.compare import compare_state_dicts, common_prefix
from harness.config.registry import use_registry
from harness.errors import HarnessError
from test_timm_encoder import COMMIT, put_in_hub_cache, sha256

REPO = "timm/vit_small_patch16_224.dino"
SHAPE = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
PERTURBED = "blocks.1.attn.proj.weight"
REGISTRY = """
encoders:
  dino-file:
    {{plugin: pretrained, params: {{arch: vit_small_patch16_224, img_size: 32, patch_size: 8,
      model_kwargs: {{depth: 2, embed_dim: 32, num_heads: 2}}, checkpoint: "{checkpoint}"}}}}
  dino-file-perturbed:
    {{plugin: pretrained, params: {{arch: vit_small_patch16_224, img_size: 32, patch_size: 8,
      model_kwargs: {{depth: 2, embed_dim: 32, num_heads: 2}}, checkpoint: "{perturbed}"}}}}
  dino-hub:  # crop_pct 1: the images reach the network as the `pretrained` plugin passes them
    {{plugin: timm, params: {{model: vit_small_patch16_224.dino, img_size: 32, crop_pct: 1.0,
      model_kwargs: {{patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}}}}}}
  dino-hf-hub: {{plugin: timm, params: {{model: "hf-hub:{repo}", crop_pct: 1.0}}}}  # the shape from config.json
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import timm
    from timm.models._hub import save_config_for_hf

    root = tmp_path_factory.mktemp("compare")
    torch.manual_seed(5)
    model = timm.create_model("vit_small_patch16_224.dino", pretrained=False, num_classes=0, **SHAPE).eval()
    weights = put_in_hub_cache(root / "hf-cache", REPO, model)
    save_config_for_hf(model, str(weights.parent / "config.json"))
    state = model.state_dict()
    head = {"head.mlp.0.weight": torch.zeros(4, 32), "head.last_layer.weight_g": torch.ones(4, 1)}
    paths = {}
    for name, teacher in (("checkpoint", state), ("perturbed", {**state, PERTURBED: state[PERTURBED] + 1e-3})):
        paths[name] = root / f"dino-{name}.pth"
        torch.save({
            "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()}, **head},
            "student": {f"module.backbone.{k}": torch.zeros_like(v) for k, v in state.items()},
            "epoch": 3,
        }, paths[name])
    registry = root / "registry.yaml"
    registry.write_text(REGISTRY.format(repo=REPO, **paths))
    return {"cache": root / "hf-cache", "weights": weights, "registry": registry, **paths}


@pytest.fixture(autouse=True)
def offline_hub(files: dict, monkeypatch: pytest.MonkeyPatch, _fresh_registry: None) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(files["cache"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(files["cache"]))
    use_registry(files["registry"])


def compare(files: dict, capsys: pytest.CaptureFixture, *names: str) -> tuple[int, str]:
    status = main(["--registry", str(files["registry"]), "compare", *names, "--images", "8"])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_hub_entries_and_the_dino_checkpoint_hold_the_same_weights(files: dict, capsys: pytest.CaptureFixture) -> None:
    status, report = compare(files, capsys, "dino-file", "dino-hub")
    assert status == 0, report
    assert "bit-identical: 30 of the 30 under both names" in report and "max |a - b| 0 " in report and "cosine similarity min 1.000000" in report
    assert "same weights (every tensor bit-identical) and the same features" in report
    status, report = compare(files, capsys, "dino-hub", "dino-hf-hub")
    assert status == 0 and "bit-identical: 30 of the 30 under both names" in report, report


def test_a_perturbed_tensor_is_named_and_exits_1(files: dict, capsys: pytest.CaptureFixture) -> None:
    status, report = compare(files, capsys, "dino-hf-hub", "dino-file-perturbed")
    assert status == 1, report
    assert f"differs: {PERTURBED} max |a - b| 0.001" in report and "bit-identical: 29 of the 30 under both names" in report
    assert report.count("  differs: ") == 1 and report.rstrip().endswith("different weights")
    status, report = compare(files, capsys, "dino-file", "no-such-encoder")
    assert status == 2 and "unknown encoder (instance or plugin) 'no-such-encoder'" in report
    status, report = compare(files, capsys, "dino-file", "rgb")
    assert status == 2 and "encoder 'rgb'" in report and "has no torch module" in report


def test_names_under_a_wrapper_match_after_its_prefix() -> None:
    inner = {"cls_token": torch.ones(1, 2), "blocks.0.weight": torch.zeros(3)}
    wrapped = {f"model.backbone.{k}": v.clone() for k, v in inner.items()}
    assert common_prefix(wrapped) == "model.backbone." and common_prefix(inner) == ""
    result = compare_state_dicts(inner, wrapped)
    assert result.same and result.prefixes == ("", "model.backbone.")
    result = compare_state_dicts(inner, {**inner, "extra": torch.zeros(1), "cls_token": torch.ones(1, 2).double()})
    assert not result.same and result.only_b == ["extra"] and result.differing == [("cls_token", 0.0, " (torch.float32 against torch.float64)")]


def test_hf_hub_names_load_from_the_cache_with_the_weights_digest(files: dict) -> None:
    by_repo = harness.get_encoder("dino-hf-hub")
    assert by_repo.architecture == "vit_small_patch16_224 32px" and by_repo.input_size == 32
    digest = sha256(files["weights"])
    assert by_repo.describe()["params"]["weights_sha256"] == digest
    pinned = harness.get_encoder("timm", model=f"hf-hub:{REPO}@{COMMIT}")
    assert pinned.describe()["params"]["weights_sha256"] == digest and pinned.key != by_repo.key

    missing = harness.get_encoder("timm", model="hf-hub:someone/absent-model")
    described = missing.describe()["params"]
    assert described["weights_sha256"] == "missing:hf-hub:someone/absent-model" and described["data_config"] is None
    with pytest.raises(HarnessError) as caught:
        missing.prepare()
    message = str(caught.value)
    assert "'hf-hub:someone/absent-model'" in message and str(files["cache"]) in message
    assert "huggingface-cli download someone/absent-model" in message
