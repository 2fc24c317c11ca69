"""The target of ``redis-rpc run``: ``package.module:attr``, imported, as a ``redis_rpc.App``."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from redis_rpc._broker import RedisBroker
from redis_rpc._cli.app import App


class TargetError(Exception):
    """The target of ``run`` cannot be loaded: the command was given wrong, so one line says why."""


def split_target(target: str) -> tuple[str, str]:
    """``("package.module", "attr")`` from ``"package.module:attr"``.

    Raises:
        TargetError: *target* does not have that shape.
    """
    module_name, colon, attr = target.partition(":")
    if not (colon and module_name and attr):
        msg = f"The target must look like package.module:attr, not {target!r}."
        raise TargetError(msg)
    return module_name, attr


def load_target(target: str) -> App:
    """Import ``package.module:attr`` and return its ``App``; a ``RedisBroker`` is put in one.

    The current directory is importable, as with ``python -m``. *attr* may
    be dotted (``module:holder.app``).

    Raises:
        TargetError: *target* is malformed or names a file, its module does
            not exist or raises while it is imported, the module has no such
            attribute, or it is neither an ``App`` nor a ``RedisBroker``.
    """
    module_name, attr = split_target(target)
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    # A file's path is no module name; importing "service.py" would import
    # "service" first (running it) and then fail on its submodule "py".
    if "/" in module_name or "\\" in module_name:
        raise TargetError(_file_hint(module_name, attr))
    if module_name.endswith(".py") and os.path.isfile(module_name):
        raise TargetError(_file_hint(module_name, attr))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            # The module exists, and something it imports does not.
            raise TargetError(_import_failure(module_name, exc)) from None
        if module_name.endswith(".py"):
            raise TargetError(_file_hint(module_name, attr)) from None
        msg = (
            f"Cannot import {module_name!r}: there is no module named {exc.name!r} "
            f"(run from the directory that holds it, or add that to PYTHONPATH)."
        )
        raise TargetError(msg) from None
    except Exception as exc:  # noqa: BLE001 - whatever the module's own code raised
        raise TargetError(_import_failure(module_name, exc)) from None
    found: object = module
    for name in attr.split("."):
        try:
            found = getattr(found, name)
        except AttributeError:
            msg = f"Module {module_name!r} has no attribute {attr!r}."
            raise TargetError(msg) from None
    if isinstance(found, App):
        return found
    if isinstance(found, RedisBroker):
        return App(found)
    msg = f"{target} is of type {type(found).__name__}, not a redis_rpc.App or a redis_rpc.RedisBroker."
    raise TargetError(msg)


def _file_hint(module_name: str, attr: str) -> str:
    """The advice for a target that names a file, ``service.py:app``: name the module."""
    path = module_name.replace("\\", "/").removeprefix("./").removesuffix(".py")
    dotted = path.strip("/").replace("/", ".")
    return (
        f"The target names a file, {module_name!r}; name its module instead, "
        f"without .py: {dotted}:{attr}"
    )


def _import_failure(module_name: str, exc: BaseException) -> str:
    """One line for a module whose import raised *exc*: what, where, and how to see more."""
    where, text = "", str(exc)
    if isinstance(exc, SyntaxError):  # its str() has the place too, in its own words
        text = exc.msg
        if exc.filename:
            where = f" ({_short_path(exc.filename)}, line {exc.lineno})"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        # The innermost frame outside importlib is the application's line.
        own = [f for f in frames if not f.filename.startswith("<frozen importlib")]
        if own:
            where = f" ({_short_path(own[-1].filename)}, line {own[-1].lineno})"
    text = " ".join(text.split())  # one line, whatever the message holds
    return (
        f"Importing {module_name!r} raised {type(exc).__name__}: {text}{where};"
        f" python -c 'import {module_name}' shows the traceback."
    )


def _short_path(path: str) -> str:
    """*path* relative to the current directory when it is inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive, on Windows
        return path
    return path if relative.startswith("..") else relative
