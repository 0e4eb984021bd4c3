"""YAML with line numbers, and a small typed validator over dataclasses: a bad file raises SpecError naming the
file, the line and the key path, and what was expected (for the matrix and any other typed input file)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

import yaml


class SpecError(ValueError):
    """A one-line, user-facing description of what is wrong with an input file."""


def _lines(node, path=()) -> dict[tuple, int]:
    """Map each key path of a composed YAML node to its 1-based line."""
    out = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out.update(_lines(v, path + (k.value,)))
            out[path + (k.value,)] = k.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_lines(v, path + (i,)))
    return out


class Ctx:
    def __init__(self, file: str, lines: dict[tuple, int]):
        self.file, self.lines = file, lines

    def fail(self, path: tuple, msg: str) -> typing.NoReturn:
        line = next((self.lines[path[:i]] for i in range(len(path), -1, -1) if path[:i] in self.lines), None)
        where = f"{self.file}:{line}" if line else self.file
        key = ".".join(map(str, path)) or "(top level)"
        raise SpecError(f"{where}: {key}: {msg}")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None)) + " (or null)" \
            if type(None) in typing.get_args(tp) else " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of names to {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
            Any: "anything"}.get(tp, str(tp))


def _convert(value, tp, path: tuple, ctx: Ctx):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path, ctx)
            except SpecError:
                continue
        ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        names = {f.name: f for f in dataclasses.fields(tp)}
        hints = typing.get_type_hints(tp)
        for k in value:
            if k not in names:
                ctx.fail(path + (k,), f"unknown key; expected one of {', '.join(names)}")
        return tp(**{k: _convert(v, hints[k], path + (k,), ctx) for k, v in value.items()})
    if origin is list:
        if not isinstance(value, list):
            ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        return [_convert(v, typing.get_args(tp)[0], path + (i,), ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
        return {str(k): _convert(v, typing.get_args(tp)[1], path + (k,), ctx) for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")


def read_yaml(text: str, file: str) -> tuple[Any, Ctx]:
    """The parsed YAML and a context whose fail() names the file, line and key path (for any typed input file)."""
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{file}:{mark.line + 1}" if mark else file
        raise SpecError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
    return raw, Ctx(file, _lines(node) if node is not None else {})


def convert(raw, tp, ctx: Ctx):
    """`raw` checked against the dataclass `tp` (unknown keys and wrong types fail with the file:line:key)."""
    return _convert(raw, tp, (), ctx)
