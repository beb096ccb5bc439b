"""Team defaults for ``dstune run`` in a file: ``dstune.toml``, or ``[tool.dstune]`` in ``pyproject.toml``.

The file is looked for next to the workload, then in each folder above it;
the first ``dstune.toml``, or ``pyproject.toml`` with a ``[tool.dstune]``
table, wins (as ruff and pytest find theirs).  Commands without a workload
file (``show``, ``report``, ``status`` ...) look from the current folder, for
``db`` only.  Precedence: command line, then environment (``DSTUNE_*``), then
the file, then dstune's defaults; ``dstune config`` shows which one gave each
value.  Keys are the ``dstune run`` option names, dashes or underscores.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# Key in the file -> parameter of the `run` command.  Environment variables are DSTUNE_ + the key in capitals.
FILE_KEYS: dict[str, str] = {
    "db": "db", "budget": "budget", "trials": "trials", "trial-timeout": "trial_timeout",
    "memory-budget": "memory_budget", "max-latency": "max_latency", "only": "only", "exclude": "exclude",
    "disable-plugins": "disable_plugin",
    "check-repeats": "check_repeats", "min-gain": "min_gain", "select": "select", "seed": "seed",
    "windows": "windows", "window-time": "window_time", "gpus": "gpus", "search": "search",
    "memory-model": "memory_model", "world-size": "world_size",
}
ENV_VARS: dict[str, str] = {param: "DSTUNE_" + key.upper().replace("-", "_") for key, param in FILE_KEYS.items()}
LIST_PARAMS = frozenset({"only", "exclude", "disable_plugin", "gpus"})


@dataclass
class FileSettings:
    """The settings one file gives, as raw values by ``run`` parameter, with the line each is on."""

    path: Path | None = None
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def origin(self, param: str) -> str:
        """The file and line a setting came from, e.g. ``pyproject.toml, line 5``."""
        line = self.lines.get(param)
        return f"{self.path}{f', line {line}' if line else ''}"

    def where(self, param: str) -> str:
        """The origin and the key, for error messages."""
        return f"{self.origin(param)}: {next(k for k, p in FILE_KEYS.items() if p == param)}"


def _key_lines(text: str, section: str | None) -> dict[str, int]:
    """Line numbers of the keys of ``section`` (``None``: the top level), for error messages."""
    lines: dict[str, int] = {}
    current: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"\s*\[([^\[\]]+)\]\s*(#.*)?$", line)
        if header:
            current = header.group(1).strip()
            continue
        match = re.match(r"\s*[\"']?([A-Za-z0-9_-]+)[\"']?\s*=", line)
        if match and current == section:
            lines.setdefault(match.group(1).replace("_", "-"), number)
    return lines


def _read(path: Path, in_pyproject: bool) -> FileSettings | None:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML ({exc}). Fix the file, or move it away to run without it.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} cannot be read ({exc}). Fix its permissions or encoding.") from None
    table = data.get("tool", {}).get("dstune") if in_pyproject else data
    if table is None:
        return None
    section = "tool.dstune" if in_pyproject else None
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [tool.dstune] must be a table of settings. Write it as [tool.dstune] "
                         "followed by lines like budget = \"30m\".")
    lines = _key_lines(text, section)
    settings = FileSettings(path=path)
    for key, value in table.items():
        normal = key.replace("_", "-")
        if normal not in FILE_KEYS:
            line = lines.get(normal)
            raise UsageError(f"{path}{f', line {line}' if line else ''}: unknown setting {key!r}. Settings a "
                             f"file can give: {', '.join(FILE_KEYS)}. Fix the name or remove the line.")
        param = FILE_KEYS[normal]
        if param == "db" and isinstance(value, str) and "://" not in value and not Path(value).expanduser().is_absolute():
            value = str(path.parent / value)  # a relative database path is relative to the file that names it
        settings.values[param] = value
        if normal in lines:
            settings.lines[param] = lines[normal]
    return settings


def find_settings(start: Path) -> FileSettings:
    """The settings of the nearest ``dstune.toml`` or ``[tool.dstune]`` at or above ``start`` (none: empty)."""
    folder = start.resolve()
    for candidate in (folder, *folder.parents):
        own = candidate / "dstune.toml"
        if own.is_file():
            return _read(own, in_pyproject=False) or FileSettings(path=own)
        project = candidate / "pyproject.toml"
        if project.is_file():
            found = _read(project, in_pyproject=True)
            if found is not None:
                return found
    return FileSettings()


def _convert(ctx: Any, param: Any, value: Any, settings: FileSettings) -> Any:
    if param.name in LIST_PARAMS and isinstance(value, str):
        value = [value]
    if param.name not in LIST_PARAMS and isinstance(value, (list, dict)):
        raise UsageError(f"{settings.where(param.name)} = {value!r} must be a single value, not a list or table.")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and param.name in ("budget", "trial_timeout"):
        value = str(value)  # plain seconds
    try:
        return param.process_value(ctx, value)
    except Exception as exc:  # click's BadParameter (typer vendors click, so no import names it)
        if not hasattr(exc, "format_message"):
            raise
        reason = str(getattr(exc, "message", "") or exc.format_message()).rstrip(".")
        raise UsageError(f"{settings.where(param.name)} = {value!r}: {reason}. Fix the value in "
                         f"the file, or override it with --{param.name.replace('_', '-')}.") from None


def merge(ctx: Any, settings: FileSettings) -> tuple[dict[str, Any], dict[str, str]]:
    """The command's parameters with the file's values where neither the command line nor the environment
    gave one, and where each value came from (``command line``, ``env NAME``, the file and line, ``default``)."""
    params = dict(ctx.params)
    sources: dict[str, str] = {}
    by_name = {p.name: p for p in ctx.command.params}
    for param in FILE_KEYS.values():
        # click's ParameterSource, compared by name: typer vendors click, so no import names the enum.
        source = getattr(ctx.get_parameter_source(param), "name", None)
        if source == "COMMANDLINE":
            sources[param] = "command line"
        elif source == "ENVIRONMENT":
            sources[param] = f"env {ENV_VARS[param]}"
        elif param in settings.values:
            params[param] = _convert(ctx, by_name[param], settings.values[param], settings)
            sources[param] = settings.origin(param)
        else:
            sources[param] = "default"
    if params.get("db") is None and sources["db"] == "default":
        sources["db"] = "default (./dstune.db)"
    return params, sources


def resolve_db(db: str | None, start: Path | None = None) -> str | None:
    """The store every command uses, decided in this one place.

    ``db`` is what the command line gave (typer has already taken
    ``$DSTUNE_DB`` into it where the option declares that variable); then
    ``$DSTUNE_DB``; then the ``db`` of the config file nearest ``start`` (the
    workload's folder for ``run``, else the current folder); else None, which
    the store reads as ``./dstune.db``.
    """
    if db:
        return db
    if os.environ.get("DSTUNE_DB"):
        return os.environ["DSTUNE_DB"]
    value = find_settings(start or Path.cwd()).values.get("db")
    return str(value) if value is not None else None

