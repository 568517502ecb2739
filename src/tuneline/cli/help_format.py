"""Plain metavars in --help.

typer >= 0.2x prints Python types as metavars (`--resume <bool>`, `--set <list[str]>`, `{recipe}` in
the usage line) and has no setting to turn that off. Every command of the app goes through
PlainHelpGroup (the `cls` of the Typer objects in cli/app.py), which gives each parameter the
reading of an ordinary command line: flags without a type, value options with a word (TEXT, PATH,
N, FLOAT, [a|b]) unless they name their own `metavar=`, arguments as RECIPE / [RUN] / RUNS... in the
usage line. Older typer (click's own metavars, already plain) is left as it is.
"""

from __future__ import annotations

from enum import Enum
from pathlib import PurePath
from typing import Any, get_args, get_origin

from typer.core import TyperArgument, TyperGroup, TyperOption


_WORDS = {int: "N", float: "FLOAT", bool: "BOOLEAN", str: "TEXT"}


def _word(param: Any) -> str:
    """The metavar word of a typer parameter, from its annotation."""
    desc = param.type_descriptor
    if desc.is_choice and desc.choices:
        return "[" + "|".join(str(c.value if isinstance(c, Enum) else c) for c in desc.choices) + "]"
    ann = desc.annotation
    if get_origin(ann) in (list, tuple):  # repeatable option / several arguments: the word of one value
        args = [a for a in get_args(ann) if a is not Ellipsis]
        if get_origin(ann) is tuple and len(args) > 1:
            return " ".join(_WORDS.get(a, "TEXT") for a in args)
        ann = args[0] if args else str
    if desc.is_path or (isinstance(ann, type) and issubclass(ann, PurePath)):
        return "PATH"
    return _WORDS.get(ann, "TEXT")


class _PlainOption(TyperOption):
    __slots__ = ()  # same layout as typer's class: an existing parameter is switched over in place

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        word = self.metavar or _word(self)
        return word + "..." if self.nargs != 1 else word


class _PlainArgument(TyperArgument):
    __slots__ = ()

    def display_type_rich(self, ctx: Any) -> str | None:
        return _word(self)

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = (self.metavar or self.name or "").upper()
        if self.nargs != 1:
            name += "..."
        return [name if self.required else f"[{name}]"]


def _plain_param(param: Any) -> None:
    if not hasattr(param, "type_descriptor"):  # older typer: click's metavars
        return
    if type(param) is TyperOption:
        param.__class__ = _PlainOption
    elif type(param) is TyperArgument:
        param.__class__ = _PlainArgument


_PLAIN_CLASSES: dict[type, type] = {}


def _plain_class(cls: type) -> type:
    """`cls` whose every parameter handed out (its --help option included) reads plainly. A direct
    subclass with no slots of its own, so that an existing command can be switched over in place."""
    if getattr(cls, "_plain_params", False):
        return cls
    if cls not in _PLAIN_CLASSES:
        class Plain(cls):  # type: ignore[valid-type,misc]
            __slots__ = ()
            _plain_params = True

            def get_params(self, ctx: Any) -> list[Any]:
                params = super().get_params(ctx)
                for param in params:
                    _plain_param(param)
                return params

        Plain.__name__, Plain.__qualname__ = cls.__name__, cls.__qualname__
        _PLAIN_CLASSES[cls] = Plain
    return _PLAIN_CLASSES[cls]


def _plain_command(cmd: Any) -> None:
    cmd.__class__ = _plain_class(type(cmd))
    for sub in getattr(cmd, "commands", {}).values():
        _plain_command(sub)


class PlainHelpGroup(_plain_class(TyperGroup)):  # type: ignore[misc]
    """The group class of the app: its own commands and those of its subgroups read plainly in --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for cmd in self.commands.values():
            _plain_command(cmd)
