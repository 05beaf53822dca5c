"""The generated reference pages of the documentation site: configuration (from the pydantic schema) and CLI
(from the argparse parsers).

``mkdocs.yml`` lists this file under ``hooks:``; ``on_files`` adds ``reference/config.md`` and
``reference/cli.md`` to every build, so the pages are rebuilt from the code each time and cannot go stale.
``tests/test_docs.py`` imports it to check the built pages against the same schema and parsers.
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import re
import tokenize
import types
import typing
from typing import Any, Union

from pydantic import BaseModel

CONFIG_PAGE = "reference/config.md"
CLI_PAGE = "reference/cli.md"

# pydantic/annotated_types constraint attribute -> how the type column shows it
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "min length"}


# --------------------------------------------------------------------------------------- configuration reference


def _cell(text: str) -> str:
    """``text`` made safe for one Markdown table cell (no pipes or newlines)."""
    return text.replace("|", "\\|").replace("\n", " ")


def _constraints(metadata: list[Any]) -> list[str]:
    """``[Gt(gt=0), Lt(lt=1)]`` -> ``["> 0", "< 1"]``."""
    shown = []
    for item in metadata:
        for attr, symbol in _BOUNDS.items():
            if getattr(item, attr, None) is not None:
                shown.append(f"{symbol} {getattr(item, attr)}")
    return shown


def type_name(annotation: Any, metadata: list[Any] = ()) -> str:
    """A readable type for a config key: ``int > 0 | null``, ``"min" | "max"``, ``list[component]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0], [*args[1:], *metadata])
    bounds = ", ".join(_constraints(list(metadata)))
    suffix = f" ({bounds})" if bounds else ""
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) if a is not type(None) else "null" for a in args) + suffix
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]" if args else origin.__name__
    if annotation is Any:
        return "any"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "section" if "name" not in annotation.model_fields else "component"
    return getattr(annotation, "__name__", str(annotation)) + suffix


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel) and "name" not in type(value).model_fields:
        return "its keys' defaults"  # a whole section: each key's default is in its own table
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    elif isinstance(value, list):
        value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    return f"`{json.dumps(value)}`"


def source_comments(cls: type) -> dict[str, str]:
    """The comments written beside each field of ``cls``: the comment lines just above it, then its own line's."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines, found = source.splitlines(), {}
    for number, line in enumerate(lines, start=1):
        field = re.match(r"    (\w+)\s*:", line)
        if not field or field.group(1) not in cls.model_fields:
            continue
        above, row = [], number - 1
        while row >= 1 and lines[row - 1].strip().startswith("#"):
            above.insert(0, comments.get(row, ""))
            row -= 1
        own = [comments[number]] if number in comments else []
        found[field.group(1)] = " ".join(above + own)
    return found


def _own_doc(cls: type) -> str:
    return inspect.cleandoc(cls.__dict__.get("__doc__") or "")


def _section(path: str, model: type[BaseModel], level: int) -> list[str]:
    """The Markdown of one config section: its docstring, then a table of its keys; nested sections after."""
    out = [f"{'#' * level} `{path}`", ""]
    if _own_doc(model):
        out += [_own_doc(model), ""]
    comments, nested = source_comments(model), []
    out += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        description = field.description or comments.get(name, "")
        sub = _section_model(field.annotation)
        if sub is not None and "name" not in sub.model_fields:
            nested.append((f"{path}.{name}", sub))
            description = f"{description} See [`{path}.{name}`](#{_anchor(path + '.' + name)}).".strip()
        row = [f"`{name}`", type_name(field.annotation, field.metadata), _default(field), description]
        out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if model.model_config.get("extra") == "allow":
        out += ["", "Any other key is passed to the named component's builder, checked against its signature."]
    out.append("")
    for sub_path, sub in nested:
        out += _section(sub_path, sub, level + 1)
    return out


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel a field holds (``Optional[X]`` and ``list[X]`` unwrapped), or None."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if arg is not type(None) and (found := _section_model(arg)) is not None:
            return found
    return None


def _anchor(path: str) -> str:
    """The id the ``toc`` extension gives a ``### `path` `` heading."""
    return re.sub(r"[^\w-]", "", path.replace(" ", "-")).lower()


def config_sections() -> list[str]:
    """The top-level keys of a run config, in schema order."""
    from deepseek.config.schema import Config

    return list(Config.model_fields)


def config_reference_markdown() -> str:
    """The configuration reference page, from ``deepseek.config.schema.Config``."""
    from deepseek.config.schema import Config

    out = [
        "# Configuration reference",
        "",
        "Generated from `deepseek.config.schema` when the site is built. A run config has these top-level",
        "sections; a *component* is `{name: <registered name or import path>, ...}` (or just the name) whose",
        "other keys are its builder's keyword arguments. Unknown keys elsewhere are errors.",
        "",
        _own_doc(Config),
        "",
        "| section | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    comments = source_comments(Config)
    for name, field in Config.model_fields.items():
        row = [f"[`{name}`](#{_anchor(name)})", type_name(field.annotation, field.metadata), _default(field),
               field.description or comments.get(name, "")]  # fmt: skip
        out.append("| " + " | ".join(_cell(c) for c in row) + " |")
    out.append("")
    for name, field in Config.model_fields.items():
        model = _section_model(field.annotation)
        if model is None:
            out += [f"## `{name}`", "", f"Type `{type_name(field.annotation)}`, default {_default(field)}.", ""]
        else:
            out += _section(name, model, 2)
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ CLI reference


def parsers() -> list[argparse.ArgumentParser]:
    """The two top-level parsers: ``deepseek`` and ``deepseek-serve``."""
    from deepseek.cli import serve_cmd
    from deepseek.cli.main import build_parser

    main = build_parser()
    serve_sub = next(a for a in main._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    serve = argparse.ArgumentParser(prog="deepseek-serve", description=serve_sub.description)
    serve_cmd.add_arguments(serve)  # what serve_cmd.main builds: the same arguments as `deepseek serve`
    return [main, serve]


def commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """Every command under ``parser``, depth first: ``(prog, parser, one-line help)``, the parser itself first."""
    found = [(parser.prog, parser, "")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                subs = commands(sub)
                found.append((subs[0][0], sub, helps.get(name, "")))
                found += subs[1:]
    return found


def _option_row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    name = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
    formatter = parser._get_formatter()
    help_text = formatter._expand_help(action) if action.help else ""
    details = []
    if action.choices is not None:
        details.append("choices: " + ", ".join(f"`{c}`" for c in action.choices))
    if action.required and action.option_strings:
        details.append("required")
    if action.nargs in ("*", "+", argparse.REMAINDER):
        details.append("repeatable")
    default = action.default
    if action.option_strings and default not in (None, False, argparse.SUPPRESS) and not action.required:
        details.append(f"default: `{default}`")
    return "| " + " | ".join(_cell(c) for c in (name, help_text, "; ".join(details))) + " |"


def cli_reference_markdown() -> str:
    """The CLI reference page: every command of ``deepseek`` and ``deepseek-serve`` with its options."""
    out = ["# CLI reference", "",
           "Generated from the argparse parsers (`deepseek.cli`) when the site is built. `--help` on any",
           "command prints the same.", ""]  # fmt: skip
    for parser in parsers():
        for prog, sub, help_line in commands(parser):
            level = "##" if sub is parser else "###"
            out += [f"{level} `{prog}`", ""]
            text = sub.description or help_line
            if text:
                out += [inspect.cleandoc(text), ""]
            out += ["```text", sub.format_usage().strip(), "```", ""]
            actions = [a for a in sub._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
            if actions:
                out += ["| argument | help | details |", "| --- | --- | --- |"]
                out += [_option_row(sub, a) for a in actions]
                out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------- mkdocs hook


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: add the generated reference pages to the build."""
    from mkdocs.structure.files import File

    for path, markdown in ((CONFIG_PAGE, config_reference_markdown()), (CLI_PAGE, cli_reference_markdown())):
        files.append(File.generated(config, path, content=markdown))
    return files
