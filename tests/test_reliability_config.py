"""registry.yaml files that used to hang, exhaust memory, pass silently or crash: alias
bombs, repeated keys and text that is not UTF-8 are refused with a message naming the file."""

from __future__ import annotations

import time

import pytest

from harness.cli import main
from harness.config.registry import read_registry_file
from harness.errors import RegistryError


def alias_bomb(levels: int, width: int = 10) -> str:
    """A 'billion laughs' document hidden in an instance's params: `width ** levels` strings."""
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    body = "\n".join("      " + line for line in lines)
    return f"generators:\n  bomb:\n    plugin: shaders\n    params:\n{body}\n"


def test_an_alias_bomb_is_refused_at_once(tmp_path, capsys):
    path = tmp_path / "registry.yaml"
    path.write_text(alias_bomb(levels=9))
    assert len(path.read_bytes()) < 2000
    started = time.perf_counter()
    assert main(["--registry", str(path), "list"]) == 2
    assert time.perf_counter() - started < 1.0
    message = capsys.readouterr().err
    assert str(path) in message and "aliases" in message and "100,000 nodes" in message


def test_a_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text("generators:\n  loop:\n    plugin: shaders\n    params: &p {programs: [*p]}\n")
    with pytest.raises(RegistryError, match="aliases"):
        read_registry_file(path)


def test_aliases_of_a_sensible_size_still_work(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(
        "generators:\n"
        "  one: {plugin: shaders, params: &common {programs: [a, b], fps: 5}}\n"
        "  two: {plugin: shaders, params: {<<: *common, fps: 7}}\n"
    )
    parsed = read_registry_file(path)
    assert parsed.generators["two"].params == {"programs": ["a", "b"], "fps": 7}


def test_a_repeated_key_is_refused_naming_it_and_both_lines(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text("encoders:\n  rgb-small: {plugin: rgb}\n  other: {plugin: rgb}\n  rgb-small: {plugin: pixels}\n")
    with pytest.raises(RegistryError) as caught:
        read_registry_file(path)
    message = str(caught.value)
    assert str(path) in message and "'rgb-small'" in message and "line 2" in message and "line 4" in message


def test_a_file_that_is_not_utf8_is_refused(tmp_path, capsys):
    path = tmp_path / "registry.yaml"
    path.write_bytes("datasets:\n  mine: {format: imagefolder, root: /data/caf\u00e9}\n".encode("latin-1"))
    assert main(["--registry", str(path), "list"]) == 2
    message = capsys.readouterr().err
    assert str(path) in message and "UTF-8" in message and "line 2" in message
