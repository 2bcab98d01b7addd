"""Run the code blocks of a Markdown page, as a reader would, in an empty working folder.

Every fenced block of the README and of the documentation pages is run, in page order, or carries a
marker (an HTML comment on the line before it) saying what to do with it instead:

* ``python`` blocks are executed in one namespace per page (later blocks see earlier names);
* ``bash`` blocks are run by ``bash -euo pipefail`` with the interpreter's ``bin`` folder first on
  ``PATH`` (so ``an8flower``, ``python`` and ``torchrun`` are this installation's: a virtual
  environment that borrows torch from the system site-packages gets a ``torchrun`` that runs
  ``python -m torch.distributed.run``);
* ``<!-- test: file: NAME -->``: the block is written to ``NAME`` for the blocks after it;
* ``<!-- test: script: NAME -->``: the block is written to ``NAME`` and run as ``python NAME``
  (for code that must run as a script, such as a worker pool's ``__main__`` guard);
* ``<!-- test: skip: REASON -->``: not run, for the reason given (installs, data sets we do not
  have, hours of work); the reason is required;
* ``<!-- test: same as PAGE -->``: the block is also, verbatim, a block of ``PAGE`` (a path from
  the repository root), where it runs; the tests check that it is;
* ``<!-- readme-example: NAME -->``: run by its own test in ``tests/test_readme.py``.

A block in any other language (``toml``, ``text``, ``bibtex``) needs a marker. Usage:
``python tests/docblocks.py PAGE.md`` runs PAGE's blocks in the current folder; exit status 0 when
every block ran, else 1 with the failing block named on stderr.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

RUNNABLE = ("python", "bash")
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>```+|~~~+)(?P<info>[^\n`]*)$")
_MARKER = re.compile(
    r"<!--\s*(?:test:\s*(?:(?P<kind>skip|file|script):|(?P<same>same as))\s*(?P<arg>.*?)"
    r"|readme-example:\s*(?P<example>\S+))\s*-->"
)


@dataclass
class Block:
    """A fenced code block: its language, text, first line number (1-based) and marker."""

    language: str
    text: str
    line: int
    kind: str | None = None  # "skip", "file", "script", "same", "example" or None (run it)
    arg: str = ""


def blocks(markdown: str) -> list[Block]:
    """The fenced blocks of ``markdown``, each with the marker on the non-blank line before it."""
    lines = markdown.split("\n")
    out: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, language = match["fence"], match["info"].strip().split(" ")[0].lower()
        start = i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        body = "\n".join(line[len(match["indent"]) :] for line in lines[i + 1 : j]) + "\n"
        block = Block(language, body, start + 1)
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = _MARKER.fullmatch(lines[k].strip()) if k >= 0 else None
        if marker:
            block.kind = (
                "example" if marker["example"] else "same" if marker["same"] else marker["kind"]
            )
            block.arg = (marker["example"] or marker["arg"] or "").strip()
        out.append(block)
        i = j + 1
    return out


def problems(page: Path, root: Path | None = None) -> list[str]:
    """What is wrong with the markers of ``page``: unmarked blocks that cannot run, skips without
    a reason, file names that leave the working folder, "same as" blocks that are not in the page
    they name (a path from ``root``, default the page's folder)."""
    found = []
    for b in blocks(page.read_text(encoding="utf-8")):
        where = f"{page.name}:{b.line}"
        if b.kind == "same":
            other = (root or page.parent) / b.arg
            twins = (
                [o for o in blocks(other.read_text(encoding="utf-8")) if o.kind is None]
                if other.is_file()
                else []
            )
            if (b.language, b.text) not in [(o.language, o.text) for o in twins]:
                found.append(f"{where}: not a block that runs in {b.arg}")
        if b.kind is None and b.language not in RUNNABLE:
            found.append(
                f"{where}: a {b.language or 'plain'} block needs a marker (test: skip/file/script)"
            )
        if b.kind == "skip" and len(b.arg) < 10:
            found.append(f"{where}: a skipped block needs its reason")
        if b.kind in ("file", "script") and (not b.arg or Path(b.arg).name != b.arg):
            found.append(f"{where}: {b.kind} needs a plain file name, got {b.arg!r}")
    return found


def run_page(page: Path, folder: Path) -> None:
    """Run ``page``'s blocks in ``folder``; raise ``RuntimeError`` naming the first that fails."""
    bins = [str(Path(sys.executable).parent)]
    if not (Path(sys.executable).parent / "torchrun").exists():
        shim = folder / ".bin" / "torchrun"
        shim.parent.mkdir(exist_ok=True)
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m torch.distributed.run "$@"\n')
        shim.chmod(0o755)
        bins.append(str(shim.parent))
    # Libraries' caches (Hugging Face datasets) go to the working folder, not the home folder.
    os.environ["HF_HOME"] = str(folder / ".cache" / "huggingface")
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([*bins, env.get("PATH", "")])
    env.setdefault("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    os.chdir(folder)
    for b in blocks(page.read_text(encoding="utf-8")):
        where = f"{page.name}:{b.line}"
        if b.kind in ("skip", "same", "example"):
            continue
        if b.kind in ("file", "script"):
            (folder / b.arg).write_text(b.text, encoding="utf-8")
            if b.kind == "file":
                continue
            result = subprocess.run(
                [sys.executable, b.arg], env=env, capture_output=True, text=True
            )
        elif b.language == "python":
            print(f"--- {where} (python)", flush=True)
            try:
                exec(compile(b.text, where, "exec"), namespace)
            except BaseException as exc:  # SystemExit included: a block must not exit
                raise RuntimeError(f"{where}: the python block failed: {exc!r}") from exc
            continue
        elif b.language == "bash":
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", b.text], env=env, capture_output=True, text=True
            )
        else:
            continue
        label = f"{b.language}, {b.arg}" if b.arg else b.language
        print(f"--- {where} ({label})\n{result.stdout}{result.stderr}", flush=True)
        if result.returncode != 0:
            output = f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
            raise RuntimeError(f"{where}: exit status {result.returncode}\n{output}")


if __name__ == "__main__":
    page = Path(sys.argv[1]).resolve()
    try:
        run_page(page, Path.cwd())
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
