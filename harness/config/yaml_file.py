"""Reading a user's YAML file safely: UTF-8 text, plain data only (YAML's safe tags), no
duplicate keys, and a bound on the size of the document after alias expansion.

Aliases (`*name`) let a few hundred bytes stand for billions of nodes (the "billion
laughs" document); the harness serialises parameters for hashing, so such a document
would hang a run or exhaust memory. The document is composed (aliases stay shared) and
its expanded size counted before any Python object is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from harness.errors import HarnessError

MAX_EXPANDED_NODES = 100_000  # a registry file of thousands of instances stays far below
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(HarnessError):
    """A YAML file that cannot be read as plain data: the message names the file and why."""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, second_line: int) -> None:
        super().__init__(f"the key {key!r} appears twice, on line {first_line} and line {second_line}; keep one")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (instead of keeping the last)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue  # keys merged in with `<<` may be overridden, that is what merging is for
            key = self.construct_object(key_node, deep=True)
            try:
                line = first_line.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: the base constructor refuses it with its own message
            if line != key_node.start_mark.line + 1:
                raise _DuplicateKey(key, line, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def expanded_size(root: Node, limit: int) -> int:
    """The number of nodes of `root` with every alias expanded, counting up to just past
    `limit` (enough to refuse); a node that contains itself counts as past the limit."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            sizes[id(node)] = 1
            continue
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(child)] for child in children))
            continue
        if id(node) in on_path:
            return limit + 1  # a recursive alias: its expansion never ends
        on_path.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                return limit + 1
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def load_yaml_file(path: Path, max_nodes: int = MAX_EXPANDED_NODES) -> Any:
    """The data in the YAML file at `path` (None for an empty file).

    Refused with a `YamlFileError` naming the file: unreadable or not UTF-8, not valid
    YAML, tags beyond plain data, a repeated key, or more than `max_nodes` nodes once
    aliases are expanded.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise YamlFileError(f"{path}: cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise YamlFileError(
            f"{path}: not UTF-8 text (byte {exc.start}, line {line}); save the file with UTF-8 encoding"
        ) from None
    try:
        loader = _StrictLoader(text)
        root = loader.get_single_node()
        if root is None:
            return None
        if expanded_size(root, max_nodes) > max_nodes:
            raise YamlFileError(
                f"{path}: the document expands to more than {max_nodes:,} nodes once its aliases (*name) are "
                "expanded (an alias bomb, or a recursive alias); write the values out or use fewer aliases"
            )
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise YamlFileError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise YamlFileError(f"{path}: nested too deeply to read") from None
