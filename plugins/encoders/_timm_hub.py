"""Files of the Hugging Face hub for the `timm` encoder: a model's weights file, or the
config.json of an `hf-hub:` repo, through huggingface_hub's cache."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from harness.downloads import downloads_allowed
from harness.errors import HarnessError

from harness_plugins.encoders._shared import first_line

HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's own order of preference
_HUB_FILES_FOUND: dict[tuple[str, str, str | None, tuple[str, ...]], Path] = {}
_SILENT_HUBS: set[str] = set()  # endpoints that did not answer in this process: later lookups use the cache alone


def hub_weights(model: str, repo: str, revision: str | None, filenames: tuple[str, ...]) -> Path:
    """The weights file of hub repo `repo` in huggingface_hub's cache, the first of
    `filenames` the repo has: downloaded when missing, where downloads are allowed
    (`harness.downloads`) and the hub answers; remembered per process. Once the hub has
    not answered in this process, files are looked for in the cache alone: each
    unanswered request costs huggingface_hub's retries, some 20 s."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    memo = (constants.HF_HUB_CACHE, repo, revision, filenames)
    if memo in _HUB_FILES_FOUND and _HUB_FILES_FOUND[memo].is_file():
        return _HUB_FILES_FOUND[memo]
    where = f"hub repo {repo}" + (f" at revision {revision}" if revision else "")
    cache_only = not downloads_allowed() or constants.ENDPOINT in _SILENT_HUBS
    not_cached = False
    for filename in filenames:
        try:
            found = Path(hf_hub_download(repo, filename, revision=revision, local_files_only=cache_only))
        except LocalEntryNotFoundError:  # not in the cache, and the hub was not asked or did not answer
            if not cache_only:
                _SILENT_HUBS.add(constants.ENDPOINT)
            not_cached = cache_only = True
        except EntryNotFoundError:
            continue  # the repo has no such file
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            raise HarnessError(f"timm model {model!r}: {where} not found ({first_line(exc)}); check `model` and `revision`") from None
        except (HfHubHTTPError, OSError) as exc:
            raise HarnessError(f"timm model {model!r}: cannot fetch {filename} from {where} ({first_line(exc)})") from None
        else:
            _HUB_FILES_FOUND[memo] = found
            return found
    instead = "name the timm model and set `checkpoint:`" if "config.json" in filenames else "set `checkpoint:` to a local weights file"
    if not_cached:
        if not downloads_allowed():
            why = "downloads are off here (a dry run looks in local caches only)"
        else:
            why = "the hub cannot be reached" + (" (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else "")
        raise HarnessError(
            f"timm model {model!r}: {' or '.join(filenames)} of {where} is not in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE} and {why}. Fill the cache where there is network, "
            f"with HF_HUB_CACHE (or HF_HOME) naming the same folder: `huggingface-cli download {repo}` "
            f"(or `hf download {repo}`); or {instead}"
        )
    raise HarnessError(f"timm model {model!r}: {where} holds none of {', '.join(filenames)}; {instead}")


def hub_model_config(model: str, revision: str | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Architecture, pretrained config (less `source: hf-hub`, so that timm takes the state dict
    it is handed, and keys this timm lacks) and model arguments of `hf-hub:ORG/REPO[@REV]`."""
    from timm.models import PretrainedCfg, is_model
    from timm.models._hub import _parse_model_cfg, hf_split, load_cfg_from_json

    model_id = model.removeprefix("hf-hub:")
    repo, pinned = hf_split(model_id)
    path = hub_weights(model, repo, revision or pinned, ("config.json",))
    try:
        cfg, arch, model_args = _parse_model_cfg(load_cfg_from_json(path), {"hf_hub_id": model_id})
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HarnessError(f"timm model {model!r}: {path} is not a timm config.json ({first_line(exc)})") from None
    if not is_model(arch):
        raise HarnessError(f"timm model {model!r}: its config.json names architecture {arch!r}, which this timm does not have")
    known = {f.name for f in dataclasses.fields(PretrainedCfg)} - {"source"}
    return arch, {k: v for k, v in cfg.items() if k in known}, dict(model_args)
