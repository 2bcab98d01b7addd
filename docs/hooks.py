"""MkDocs hooks of the documentation site (``hooks:`` in ``mkdocs.yml``).

What they do, and why each is generated rather than written:

* **API source tree.** The distribution maps ``an8flower.eval`` to ``eval/``,
  ``an8flower.baselines`` to ``baselines/`` and ``an8flower.data_cards`` to ``data_cards/``
  (``package-dir`` in ``pyproject.toml``). mkdocstrings reads sources statically and looks for
  them under ``an8flower/``, so :func:`on_config` builds the package as installed in a temporary
  folder (one symbolic link per entry) and points the Python handler at it; nothing is imported.
* **Catalogues.** ``<!-- catalogue: explainers -->``, ``<!-- catalogue: adapters -->`` and
  ``<!-- catalogue: metrics -->`` in a page are replaced by tables built from the registries
  (:func:`an8flower.baselines.list_explainers`, the adapters' ``catalogue()``,
  ``an8flower.eval.scoring.METRICS``), so the lists cannot drift from the code.
* **Tutorials.** Each ``docs/tutorials/NN-name.py`` (a Jupytext percent script, executed by
  ``tests/test_tutorials.py``) becomes the page ``tutorials/NN-name.md``; the script itself stays
  in the site for download.
* **reST in docstrings.** The docstrings cite names with reST roles (``:func:`iou_curve` ``) and
  double backticks; :class:`RestRoles`, a griffe extension, turns both into Markdown code spans.
* **Pages written by the board's own run.** The published board (``docs/leaderboard/``, written
  by ``an8flower leaderboard``) and ``docs/security.md`` join the navigation when they exist
  (:func:`on_config`), and ``<!-- published-board -->`` links to the board's page when it does.
* **Copies.** ``data_cards/*.md`` become ``data-cards/*.md`` and ``CHANGELOG.md`` becomes
  ``changelog.md``.
"""

from __future__ import annotations

import inspect
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import griffe
import mkdocs.plugins
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]
#: Import name -> folder of the repository holding it (``package-dir`` of ``pyproject.toml``).
SUBPACKAGES = {"eval": "eval", "baselines": "baselines", "data_cards": "data_cards"}

_state: dict[str, Any] = {}


@mkdocs.plugins.event_priority(100)  # before mkdocstrings reads its handler options
def on_config(config: Any) -> Any:
    tmp = Path(tempfile.mkdtemp(prefix="an8flower-api-"))
    _state["tmp"] = tmp
    package = tmp / "an8flower"
    package.mkdir()
    for entry in (REPO / "an8flower").iterdir():
        if entry.name != "__pycache__" and entry.name not in SUBPACKAGES:
            (package / entry.name).symlink_to(entry)
    for name, folder in SUBPACKAGES.items():
        (package / name).symlink_to(REPO / folder)
    _optional_pages(config)
    python = config["plugins"]["mkdocstrings"].config["handlers"].setdefault("python", {})
    python["paths"] = [str(tmp)]
    python.setdefault("options", {})["extensions"] = [f"{Path(__file__).resolve()}:RestRoles"]
    return config


#: Pages other parts of the project write, as (navigation title, path in docs/), and the title of
#: the navigation entry they follow.
OPTIONAL_PAGES = (("The published board", "leaderboard"), ("Security", "security.md"))
AFTER = "The leaderboard"


def _optional_pages(config: Any) -> None:
    """Add the optional pages that exist to the navigation, after :data:`AFTER`."""
    docs = Path(config["docs_dir"])
    entries: list[dict[str, Any]] = []
    for title, path in OPTIONAL_PAGES:
        target = docs / path
        if target.is_dir():
            pages = sorted(p.relative_to(docs).as_posix() for p in target.rglob("*.md"))
            index = [p for p in pages if p.endswith("/index.md")]
            if pages:
                entries.append({title: index + [p for p in pages if p not in index]})
        elif target.is_file():
            entries.append({title: path})
    nav = config["nav"]
    at = next(i for i, item in enumerate(nav) if isinstance(item, dict) and AFTER in item) + 1
    nav[at:at] = entries


def on_shutdown() -> None:
    tmp = _state.pop("tmp", None)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- generated pages


def tutorial_markdown(script: Path) -> str:
    """The Markdown page of a Jupytext percent script: its Markdown cells as text, its code cells
    as ``python`` blocks, and a link to the script."""
    import jupytext

    notebook = jupytext.reads(script.read_text(encoding="utf-8"), fmt="py:percent")
    notebook.metadata = {}
    for cell in notebook.cells:
        cell.metadata = {}
    body = jupytext.writes(notebook, fmt="md")
    link = (
        f"\n\n*This page is the script [`{script.name}`]({script.name}), run by the tests "
        f"(`tests/test_tutorials.py`); download it and run it, or open it as a notebook with "
        f"Jupytext.*\n"
    )
    return body.rstrip() + link


def on_files(files: Files, config: Any) -> Files:
    docs = Path(config["docs_dir"])
    for script in sorted((docs / "tutorials").glob("[0-9][0-9]-*.py")):
        files.append(
            File.generated(config, f"tutorials/{script.stem}.md", content=tutorial_markdown(script))
        )
    for card in sorted((REPO / "data_cards").glob("*.md")):
        files.append(
            File.generated(
                config, f"data-cards/{card.name}", content=card.read_text(encoding="utf-8")
            )
        )
    files.append(
        File.generated(
            config, "changelog.md", content=(REPO / "CHANGELOG.md").read_text(encoding="utf-8")
        )
    )
    return files


# ---------------------------------------------------------------------------------- catalogues

_ROLE = re.compile(r":(?:func|class|mod|data|meth|attr):`~?([^`]+)`")


def code_spans(text: str) -> str:
    """reST roles (``:func:`~a.b.c` `` -> `` `c` ``) and double backticks as Markdown code spans."""
    return _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text).replace("``", "`")


class RestRoles(griffe.Extension):
    """Griffe extension: every docstring's reST roles and double backticks become code spans."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = code_spans(obj.docstring.value)


def plain(docstring: str) -> str:
    """A docstring's first paragraph as one line of Markdown (reST roles and double backticks
    become code spans; pipes are escaped for tables)."""
    first = (docstring or "").strip().split("\n\n")[0]
    return code_spans(" ".join(first.split())).replace("|", "\\|")


def _options(cls: type) -> str:
    parameters = list(inspect.signature(cls).parameters.values())
    shown = [
        f"`{p.name}={p.default!r}`"
        for p in parameters
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.default is not p.empty
    ]
    return ", ".join(shown) or "none"


def explainer_table() -> str:
    """Every built-in explainer: name, what it is, its options and defaults, its class."""
    from an8flower.baselines import explainer_class, list_explainers

    rows = ["| name | method | options (defaults) | class |", "|---|---|---|---|"]
    for name in list_explainers():
        cls = explainer_class(name)
        rows.append(
            f"| `{name}` | {plain(inspect.getdoc(cls) or '')} | {_options(cls)} | "
            f"`{cls.__module__}.{cls.__qualname__}` |"
        )
    return "\n".join(rows)


def adapter_table() -> str:
    """Per library: the version found when the site was built and the method names offered; then
    the methods left out and why, and the known duplicates of our explainers."""
    from an8flower.baselines.adapters.catalogue import DUPLICATES, catalogue

    rows = ["| library | version at build time | names |", "|---|---|---|"]
    excluded: list[str] = []
    for lib in catalogue():
        names = (
            ", ".join(f"`{m}`" for m in lib["methods"])
            if lib["available"]
            else f"not installed: `{lib['install']}`"
        )
        rows.append(
            f"| `{lib['prefix']}:` ({lib['distribution']}) | {lib['version'] or 'n/a'} | {names} |"
        )
        excluded += [f"* `{name}`: {why}" for name, why in sorted(lib["excluded"].items())]
    dup = ["| ours | theirs | agreement (each claim is a test) |", "|---|---|---|"]
    dup += [f"| `{ours}` | `{theirs}` | {how} |" for ours, theirs, how in DUPLICATES]
    return "\n".join(
        rows + ["", "**Not offered, and why:**", "", *excluded, "", "**Duplicates:**", "", *dup]
    )


def metric_table() -> str:
    """Every metric of the board: name, column header, direction, options, what it measures."""
    from an8flower.eval.scoring import METRICS

    rows = [
        "| name | column | better | board defaults | what it measures |",
        "|---|---|---|---|---|",
    ]
    for spec in METRICS.values():
        defaults = ", ".join(f"`{k}={v!r}`" for k, v in spec.defaults.items()) or ""
        better = "higher" if spec.higher_is_better else "lower"
        label = spec.label.replace("|", "\\|")
        rows.append(
            f"| `{spec.name}` | {label} | {better} | {defaults} | {plain(spec.description)} |"
        )
    return "\n".join(rows)


CATALOGUES = {"explainers": explainer_table, "adapters": adapter_table, "metrics": metric_table}
_MARKER = re.compile(r"<!-- catalogue: (\w+) -->")


def published_board(config: Any) -> str:
    """A link to the published board's page when the site has one, else where it lives."""
    if (Path(config["docs_dir"]) / "leaderboard" / "index.md").is_file():
        return "Its page: [the published board](leaderboard/index.md)."
    return "It is in the repository (its configuration, results, report and checkpoints)."


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    markdown = markdown.replace("<!-- published-board -->", published_board(config))

    def table(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in CATALOGUES:
            raise ValueError(
                f"{page.file.src_uri}: unknown catalogue {name!r} (known: {', '.join(CATALOGUES)})"
            )
        return CATALOGUES[name]()

    return _MARKER.sub(table, markdown)
