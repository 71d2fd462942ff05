"""YAML loading that remembers where every value came from.

`yaml.safe_load` forgets line numbers, and every user error must say file:line:column.
`load()` returns plain dicts/lists/scalars, with each mapping and sequence wrapped so that
`where(node, key)` can name the exact position.  Duplicate keys are errors, not silent
overwrites, and alias expansion is bounded (billion-laughs documents are refused).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from harness.errors import ConfigError

MAX_NODES = 200_000  # after alias expansion; a real scenario has a few hundred


class LocDict(dict[str, Any]):
    """A mapping from YAML that knows the position of itself and of each key."""

    path: Path
    line: int
    column: int
    key_pos: dict[str, tuple[int, int]]
    value_pos: dict[str, tuple[int, int]]


class LocList(list[Any]):
    path: Path
    line: int
    column: int
    item_pos: list[tuple[int, int]]


class _Builder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        # Scalars are resolved exactly as safe_load would (ints, bools, nulls, floats).
        self.scalars = yaml.SafeLoader("")

    def build(self, node: Node) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise ConfigError(
                f"document expands to more than {MAX_NODES} nodes (alias bomb?)",
                path=self.path,
                line=node.start_mark.line + 1,
                column=node.start_mark.column + 1,
            )
        if isinstance(node, MappingNode):
            return self._mapping(node)
        if isinstance(node, SequenceNode):
            out = LocList()
            out.path = self.path
            out.line, out.column = node.start_mark.line + 1, node.start_mark.column + 1
            out.item_pos = []
            for item in node.value:
                out.append(self.build(item))
                out.item_pos.append((item.start_mark.line + 1, item.start_mark.column + 1))
            return out
        assert isinstance(node, ScalarNode)
        return self.scalars.construct_object(node)

    def _mapping(self, node: MappingNode) -> LocDict:
        out = LocDict()
        out.path = self.path
        out.line, out.column = node.start_mark.line + 1, node.start_mark.column + 1
        out.key_pos = {}
        out.value_pos = {}
        for key_node, value_node in node.value:
            line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(
                    "merge keys (<<) are not supported", path=self.path, line=line, column=col
                )
            key = self.build(key_node)
            if not isinstance(key, str):
                raise ConfigError(
                    f"keys must be strings, got {type(key).__name__} {key!r}",
                    path=self.path,
                    line=line,
                    column=col,
                )
            if key in out:
                first = out.key_pos[key][0]
                raise ConfigError(
                    f"duplicate key {key!r} (first defined on line {first})",
                    path=self.path,
                    line=line,
                    column=col,
                )
            out[key] = self.build(value_node)
            out.key_pos[key] = (line, col)
            out.value_pos[key] = (value_node.start_mark.line + 1, value_node.start_mark.column + 1)
        return out


def read_text(path: Path) -> str:
    """A configuration file's text; a file that is missing or unreadable is a ConfigError."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("no such file", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=path) from None


def load(path: Path, text: str | None = None) -> Any:
    """Parse one YAML document from `path` (or `text`, attributed to `path`)."""
    if text is None:
        text = read_text(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", path=path) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise ConfigError(
            f"invalid YAML: {exc.problem or exc.context}", path=path, line=line, column=col
        ) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: no mark
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        char = (
            exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
        )
        raise ConfigError(
            f"invalid YAML: character U+{char:04X} is not allowed here",
            path=path,
            line=line,
            column=column,
        ) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"invalid YAML: {first}", path=path, line=1) from None
    if node is None:
        return None
    builder = _Builder(path)
    try:
        return builder.build(node)
    except RecursionError:
        raise ConfigError("invalid YAML: nested too deeply", path=path) from None
    except (ValueError, OverflowError) as exc:  # e.g. a 5000-digit integer, a bad date
        raise ConfigError(f"invalid YAML value: {str(exc)[:200]}", path=path) from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            f"invalid value: {exc.problem}",
            path=path,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from None
    finally:
        builder.scalars.dispose()


class Pos(TypedDict, total=False):
    """Keyword arguments of ConfigError naming a position in a file (none: no position,
    as a value checked apart from its file has)."""

    path: Path
    line: int
    column: int


def where(
    container: LocDict | LocList, key: str | int | None = None, *, value: bool = False
) -> Pos:
    """Keyword arguments for ConfigError naming `container[key]` (or the container itself);
    with value=True the position of the key's value rather than of the key."""
    line, column = container.line, container.column
    if isinstance(container, LocDict) and isinstance(key, str) and key in container.key_pos:
        line, column = (container.value_pos if value else container.key_pos)[key]
    elif isinstance(container, LocList) and isinstance(key, int) and key < len(container.item_pos):
        line, column = container.item_pos[key]
    return {"path": container.path, "line": line, "column": column}
