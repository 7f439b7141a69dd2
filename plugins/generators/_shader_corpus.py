"""A user's corpus of shader programs (`paths` of `shaders`): plain files, Shadertoy
JSON, and the shaders21k layout.

A folder is read in this order:

- a `shaders_list` file in it (one path per line, relative to the folder; empty lines
  and `#` comments skipped) names the programs; without one, the folder is searched
  recursively for `*.json`, `*.glsl`, `*.frag` and `*.fragment`;
- `*.json` and a `*.fragment` that holds JSON are Shadertoy programs: the `image` pass,
  with the `common` pass prepended; `sound` passes are ignored; a program with `buffer`
  or `cubemap` passes (multi-pass) is skipped with that reason;
- a `*.fragment` that is not JSON is a twigl program when it lies in a folder
  `fragments/` next to a folder `modes/` holding a file of the same name (shaders21k's
  layout: the mode file's lines are the mode, "300 es" and MRT as `True`/`False`); the
  files under such a `modes/` folder are not programs;
- `*.glsl` and `*.frag` are Shadertoy code with a `mainImage`.

A program's name is its path relative to the folder, without the suffix. Every program
left out is recorded in `skipped` (name -> reason) and warned about (ShaderWarning).
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import HarnessError

from harness_plugins.generators._shader_programs import _MAIN_IMAGE, Program, _clean, _from_json, warn_shader
from harness_plugins.generators._twigl import parse_mode, twigl_code

SUFFIXES = (".json", ".glsl", ".frag", ".fragment")
LIST_FILE = "shaders_list"


class ShaderCorpusError(HarnessError):
    """A corpus path given to `shaders` is missing or cannot be read."""


def _corpus_error(root: Path, what: str) -> ShaderCorpusError:
    return ShaderCorpusError(
        f"parameter `paths`: {root} {what}; set `paths` to existing, readable folders or files of shader "
        "programs (Shadertoy JSON, .glsl/.frag with mainImage, or a shaders21k folder with shaders_list)"
    )


def _listed(root: Path) -> list[Path]:
    """The files of a corpus folder: those its `shaders_list` names, or a recursive search."""
    listing = root / LIST_FILE
    try:
        if listing.is_file():
            lines = listing.read_text(encoding="utf-8", errors="replace").splitlines()
            return [root / line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        return sorted(p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
                      and not _is_mode_file(p))
    except OSError as exc:
        raise _corpus_error(root, f"cannot be read ({exc.strerror or exc})") from None


def _is_mode_file(path: Path) -> bool:
    return path.parent.name == "modes" and (path.parent.parent / "fragments" / path.name).is_file()


def _mode_file(path: Path) -> Path | None:
    if path.parent.name != "fragments":
        return None
    mode = path.parent.parent / "modes" / path.name
    return mode if mode.is_file() else None


def _read_fragment(path: Path, name: str, skipped: dict[str, str]) -> Program | None:
    """A `.fragment`: Shadertoy JSON, or a twigl program with its mode file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("{"):
        return _from_json(path, name, skipped)
    mode_file = _mode_file(path)
    if mode_file is None:
        return _skip(skipped, name, path, "neither Shadertoy JSON nor a twigl program (no modes/ file of the same name)")
    try:
        mode, es300, mrt = parse_mode(mode_file.read_text(encoding="utf-8", errors="replace").splitlines())
        common, code = twigl_code(text, mode, es300, mrt)
    except ValueError as exc:
        return _skip(skipped, name, path, f"twigl program: {exc}")
    label = f"{mode}{' 300 es' if es300 else ''}{' MRT' if mrt else ''}"
    return Program(name, code, f"{path} (twigl {label})", common)


def _skip(skipped: dict[str, str], name: str, path: Path, reason: str) -> None:
    skipped[name] = reason
    warn_shader(f"shader program {name!r} ({path}): {reason}; skipped")
    return None


def load_corpus(paths: list[str]) -> tuple[list[Program], dict[str, str]]:
    """The programs of a user's folders and files, and those skipped (name -> reason).
    A path that does not exist or cannot be read is a ShaderCorpusError naming it."""
    programs: list[Program] = []
    skipped: dict[str, str] = {}
    for raw in paths:
        root = Path(raw).expanduser()
        if not root.exists():
            raise _corpus_error(root, "does not exist")
        if not os.access(root, os.R_OK | (os.X_OK if root.is_dir() else 0)):
            raise _corpus_error(root, "cannot be read (permission denied)")
        if root.is_dir():
            files, base = _listed(root), root
        elif root.is_file():
            files, base = [root], root.parent
        else:
            raise _corpus_error(root, "is neither a file nor a folder")
        for path in files:
            name = path.relative_to(base).with_suffix("").as_posix() if path.is_relative_to(base) else path.stem
            if not path.is_file():
                _skip(skipped, name, path, f"listed in {LIST_FILE} but not found")
                continue
            suffix = path.suffix.lower()
            try:
                if suffix == ".fragment":
                    program = _read_fragment(path, name, skipped)
                elif suffix == ".json":
                    program = _from_json(path, name, skipped)
                else:
                    program = Program(name, _clean(path.read_text(encoding="utf-8", errors="replace")), str(path))
            except OSError as exc:
                _skip(skipped, name, path, f"cannot be read ({exc.strerror or exc})")
                continue
            if program is None:
                continue
            if not _MAIN_IMAGE.search(program.code):
                _skip(skipped, name, path, "no `void mainImage(out vec4, in vec2)`")
                continue
            programs.append(program)
    return programs, skipped
