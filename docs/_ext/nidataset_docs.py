"""Sphinx extension for nidataset's documentation: pages made from the code, examples that run.

- ``.. docstring-section:: OBJECT SECTION`` renders one section of a numpydoc docstring (Summary,
  Parameters, Returns, Raises, Notes, Examples), so an API page can follow the layout of nidataset's
  function pages while its text comes from the docstring. The Summary section also checks the docstring
  against the signature (numpydoc's validation): a parameter missing from either is a build warning.
- ``.. readme-table:: SECTION`` shows a table of a README.md section (the benchmark figures), converted
  from Markdown at build time, so that the figures have one source.
- ``.. command-help:: [SUBCOMMAND]`` prints the ``--help`` of the command, from ``nidataset.cli``'s parser.
- ``.. console-example::`` shows shell commands (``$ nidataset ...``) with their output; the doctest
  builder runs them in the example folder and compares the output.
- On ``builder-inited``, ``examples/demo.py`` runs in a temporary folder and the preview of its first scan
  is drawn into ``docs/_generated/`` (never committed), with the demo's printed table.
- Every name in ``nidataset.preprocessing.__all__`` must be documented somewhere.

The doctest builder's global setup calls :func:`enter_example_folder`: a fresh temporary folder holding
``scans/``, a reduced copy of the demo dataset, becomes the working directory of a page's examples.
"""

from __future__ import annotations

import atexit
import contextlib
import doctest
import importlib
import importlib.util
import inspect
import io
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "docs" / "_generated"
#: numpydoc validation codes that fail the build: the docstring and the signature must agree.
CHECKS = {"GL08", "SS01", "PR01", "PR02", "PR03", "RT01", "EX01"}
#: Help text width, so that the CLI page does not depend on the terminal of whoever builds it.
HELP_COLUMNS = "100"
#: The example dataset of the doctests: the demo's scans at half resolution (same fields of view).
EXAMPLE_SCANS = [
    ("chest_001", (128, 128, 60), (1.6, 1.6, 5.0)),
    ("chest_002", (160, 160, 45), (1.2, 1.2, 6.0)),
    ("chest_003", (96, 96, 80), (2.0, 2.0, 2.0)),
]


# -- API pages: one numpydoc section at a time ---------------------------------------------------------


def _import(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _indent(lines, prefix="     "):
    return [prefix + line if line.strip() else "" for line in lines]


def _defaults(obj, names: str) -> str:
    parameters = inspect.signature(obj).parameters
    shown = []
    for name in (part.strip() for part in names.split(",")):
        default = parameters[name].default if name in parameters else inspect.Parameter.empty
        shown.append("*required*" if default is inspect.Parameter.empty else f"``{default!r}``")
    return ", ".join(shown)


def _table(header, rows, widths):
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {' '.join(map(str, widths))}", ""]
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            cell_lines = cell if isinstance(cell, list) else [cell]
            lines.append(("   * - " if i == 0 else "     - ") + (cell_lines[0] if cell_lines else ""))
            lines.extend(_indent(cell_lines[1:], "       "))
    return lines


def _type(text: str) -> str:
    return text.removesuffix(", optional").replace("*", r"\*")


class DocstringSection(SphinxDirective):
    """Render one section of an object's numpydoc docstring as reST."""

    required_arguments = 2
    final_argument_whitespace = True

    def run(self) -> list[nodes.Node]:
        """Parse the docstring, render the section, check the docstring when rendering its summary."""
        from numpydoc.docscrape import FunctionDoc

        dotted, section = self.arguments
        obj = _import(dotted)
        doc = FunctionDoc(obj)
        if section == "Summary":
            self._validate(dotted)
            lines = [*doc["Summary"], "", *doc["Extended Summary"]]
        elif section == "Parameters":
            rows = [
                [f"``{p.name}``", _type(p.type), _defaults(obj, p.name), list(p.desc)]
                for p in doc["Parameters"]
            ]
            lines = _table(["Name", "Type", "Default", "Description"], rows, [16, 18, 12, 54])
        elif section == "Returns":
            lines = []
            for p in doc["Returns"]:
                lines += [f"``{p.type}``" + (f" ({p.name})" if p.name else ""), *_indent(p.desc, "   "), ""]
        elif section == "Raises":
            rows = [
                [", ".join(f"``{t.strip()}``" for t in p.type.split(",")), list(p.desc)]
                for p in doc["Raises"]
            ]
            lines = _table(["Exception", "Condition"], rows, [25, 75])
        elif section in ("Notes", "Examples"):
            lines = list(doc[section])
        else:
            raise self.error(f"unknown docstring section {section!r}")
        if not any(line.strip() for line in lines):
            logger.warning("%s has no %s section", dotted, section, location=self.get_location())
        self.env.note_dependency(inspect.getsourcefile(obj))
        container = nodes.container()
        source = f"{inspect.getsourcefile(obj)}:docstring of {dotted}"
        self.state.nested_parse(StringList(lines, source=source), self.content_offset, container)
        return container.children

    def _validate(self, dotted: str) -> None:
        from numpydoc.validate import validate

        for code, message in validate(dotted)["errors"]:
            if code in CHECKS:
                logger.warning("%s: %s %s", dotted, code, message, location=self.get_location())


def signature_only(app, what, name, obj, options, lines) -> None:
    """Leave out the docstrings whose sections the page renders itself: autodoc shows the signature."""
    if name in app.config.nidataset_sectioned:
        del lines[:]


# -- Figures quoted from README.md ----------------------------------------------------------------------


def _inline(markdown: str) -> str:
    """Turn a Markdown table cell into reST: `code` becomes ``code``, reST's markup characters are escaped."""
    parts = markdown.split("`")
    if len(parts) % 2 == 0:
        raise ValueError(f"unbalanced backquotes in {markdown!r}")
    text = []
    for i, part in enumerate(parts):
        if i % 2:
            text.append(f"``{part}``" if part else "")
        else:
            text.append("".join("\\" + c if c in "\\*_|<>[]" else c for c in part))
    cell = "".join(text).strip()
    # A cell that starts like a list item, a section underline or a field would not be a paragraph.
    return "\\" + cell if cell[:1] in ("-", "+", "=", "#", ":") else cell


def readme_tables(title: str) -> list[list[list[str]]]:
    """Return the Markdown tables of the README section `title`, as rows of cells (reST inline text)."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    heading = f"## {title}"
    if heading not in lines:
        raise ValueError(f"README.md has no section {heading!r}")
    tables: list[list[list[str]]] = []
    previous = ""
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                tables[-1].append([_inline(cell) for cell in cells])
        previous = line
    return tables


class ReadmeTable(SphinxDirective):
    """Show one table of a README.md section (``:index:``, from 1), so that its figures have one source."""

    required_arguments = 1
    final_argument_whitespace = True
    option_spec: ClassVar = {"index": directives.positive_int, "widths": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        """Return the table, parsed from the README; the page is rebuilt when the README changes."""
        self.env.note_dependency(str(ROOT / "README.md"))
        try:
            tables = readme_tables(self.arguments[0])
            header, *rows = tables[self.options.get("index", 1) - 1]
        except (ValueError, IndexError) as err:
            raise self.error(f"README table: {err}") from None
        widths = [int(w) for w in self.options.get("widths", "").split()] or [1] * len(header)
        container = nodes.container()
        lines = _table(header, rows, widths)
        self.state.nested_parse(StringList(lines, source="README.md"), self.content_offset, container)
        return container.children


# -- CLI reference --------------------------------------------------------------------------------------


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def command_help(command: str = "") -> str:
    """Return the ``--help`` text of ``nidataset`` or of one of its subcommands."""
    from nidataset.cli import _get_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parser = _get_parser()
        if command:
            parser = _subparsers(parser)[command]
        parser.color = False  # Python 3.14 colours help on terminals
        return parser.format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


class CommandHelp(SphinxDirective):
    """Show the help text of the command line, or of one subcommand."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        """Return the help text as a literal block; the page is rebuilt when ``cli.py`` changes."""
        import nidataset.cli

        self.env.note_dependency(nidataset.cli.__file__)
        command = self.arguments[0] if self.arguments else ""
        try:
            text = command_help(command)
        except KeyError:
            raise self.error(f"nidataset has no subcommand {command!r}") from None
        self._check_examples(text)
        block = nodes.literal_block(text, text, language="text")
        return [block]

    def _check_examples(self, text: str) -> None:
        """Warn about an example command of the help text that the parser refuses."""
        from nidataset.cli import _get_parser

        for line in text.replace("\\\n", " ").splitlines():  # a command continued on the next line is one
            if line.startswith("  nidataset "):
                try:
                    with contextlib.redirect_stderr(io.StringIO()) as errors:
                        _get_parser().parse_args(shlex.split(line)[1:])
                except SystemExit:
                    message = errors.getvalue().strip().splitlines()[-1:]
                    logger.warning("help example %r: %s", line.strip(), message, location=self.get_location())


# -- Console examples, run by the doctest builder ------------------------------------------------------


def _commands(text: str):
    """Split a console transcript into (command, expected output) pairs."""
    pairs: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            raise ValueError(f"a console example starts each command with '$ ', got {line!r}")
        command = line[2:]
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        pairs.append((command, output))
    return pairs


def _terminal(text: str) -> str:
    """Return what a terminal shows of `text`: of each line, what follows its last carriage return."""
    return "".join(line.rsplit("\r", 1)[-1] for line in text.splitlines(keepends=True))


def run_console(text: str, returncode: int = 0) -> None:
    """Run each ``$`` command of a console example; check its exit status and output (``...`` matches all).

    Commands run in a POSIX shell whose ``PATH`` starts with this interpreter's folder, where the
    installed ``nidataset`` command is. Output is what a terminal would show of stdout and stderr.
    """
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    scripts = os.path.dirname(sys.executable)
    env = {**os.environ, "COLUMNS": HELP_COLUMNS, "PATH": scripts + os.pathsep + os.environ.get("PATH", "")}
    pairs = _commands(text)
    for n, (command, expected) in enumerate(pairs):
        # Bytes, not text: text mode would turn the progress bar's carriage returns into new lines.
        done = subprocess.run(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        output = _terminal(done.stdout.decode("utf-8", "replace"))
        status = returncode if n == len(pairs) - 1 else 0
        if done.returncode != status:
            raise AssertionError(f"$ {command}\nexited with {done.returncode}, not {status}:\n{output}")
        want = "\n".join(expected).strip() + "\n" if any(expected) else ""
        if want and not checker.check_output(want, output, flags):
            raise AssertionError(f"$ {command}\nexpected:\n{want}got:\n{output}")


class ConsoleExample(SphinxDirective):
    """A shell transcript (``$ command`` lines, then their output) that the doctest builder runs."""

    has_content = True
    option_spec: ClassVar = {"returncode": directives.nonnegative_int}

    def run(self) -> list[nodes.Node]:
        """Return the transcript as a console block that carries its test for the doctest builder."""
        text = "\n".join(self.content)
        try:
            _commands(text)
        except (ValueError, IndexError) as err:
            raise self.error(str(err)) from None
        block = nodes.literal_block(text, text, language="console")
        block["testnodetype"] = "testcode"
        block["groups"] = ["default"]
        returncode = self.options.get("returncode", 0)
        block["test"] = (
            f"import nidataset_docs\nnidataset_docs.run_console({text!r}, returncode={returncode})\n"
        )
        self.set_source_info(block)
        return [block]


_folders: list[tuple[str, str | None, str]] = []
_cache: dict[str, str] = {}


def _example_scans() -> str:
    """Make the example dataset once per process; return its folder."""
    if "scans" not in _cache:
        import nibabel as nib

        from nidataset._phantom import ct_phantom

        folder = tempfile.mkdtemp(prefix="nidataset-docs-scans-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        for seed, (name, shape, spacing) in enumerate(EXAMPLE_SCANS):
            data, affine = ct_phantom(shape, spacing, seed)
            nib.save(nib.Nifti1Image(data, affine), os.path.join(folder, f"{name}.nii.gz"))
        _cache["scans"] = folder
    return _cache["scans"]


def enter_example_folder() -> None:
    """Make a fresh folder holding ``scans/`` (three small CT-like volumes) the working directory.

    Temporary files the examples make (``tempfile.mkdtemp()`` in the docstrings) go inside it too.
    """
    scans = _example_scans()
    folder = tempfile.mkdtemp(prefix="nidataset-docs-")
    shutil.copytree(scans, os.path.join(folder, "scans"))
    os.mkdir(os.path.join(folder, ".tmp"))
    _folders.append((os.getcwd(), tempfile.tempdir, folder))
    tempfile.tempdir = os.path.join(folder, ".tmp")
    os.chdir(folder)


def leave_example_folder() -> None:
    """Go back to the previous working directory and temporary folder; delete the example folder."""
    previous, tempdir, folder = _folders.pop()
    os.chdir(previous)
    tempfile.tempdir = tempdir
    shutil.rmtree(folder, ignore_errors=True)


# -- The demo and its preview picture --------------------------------------------------------------------


def make_demo_pictures(app: Sphinx) -> None:
    """Run ``examples/demo.py`` in a temporary folder; keep its table and the preview of its first scan."""
    picture, table = GENERATED / "demo_preview.png", GENERATED / "demo_output.txt"
    if app.builder.name != "html" and picture.exists() and table.exists():
        return
    GENERATED.mkdir(exist_ok=True)
    spec = importlib.util.spec_from_file_location("nidataset_demo", ROOT / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    from nidataset.preprocessing import resampling

    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="nidataset-demo-") as folder:
        os.chdir(folder)
        try:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
                demo.main()
            name = demo.SCANS[0][0]
            scan = os.path.join(demo.ROOT, "scans", f"{name}.nii.gz")
            out = os.path.join(demo.ROOT, "resampled", name)
            # The output is there: skip_existing keeps it and draws only the preview.
            resampling(scan, out, demo.TARGET, preview=True, skip_existing=True)
            shutil.copyfile(os.path.join(out, f"{name}_preview.png"), picture)
        finally:
            os.chdir(previous)
    lines = printed.getvalue().replace(os.path.join(folder, ""), "").splitlines()
    table.write_text("\n".join(line.rstrip() for line in lines) + "\n")


# -- Every public name documented -----------------------------------------------------------------------


def check_public_names(app: Sphinx, env) -> None:
    """Warn about a public name of ``nidataset.preprocessing`` that no page documents."""
    import nidataset.preprocessing

    documented = env.get_domain("py").objects
    for name in nidataset.preprocessing.__all__:
        if f"nidataset.preprocessing.{name}" not in documented:
            logger.warning("nidataset.preprocessing.%s is public but not documented", name)


def setup(app: Sphinx) -> dict:
    """Register the directives and hooks."""
    app.add_config_value("nidataset_sectioned", set(), "env")
    app.add_directive("docstring-section", DocstringSection)
    app.add_directive("command-help", CommandHelp)
    app.add_directive("readme-table", ReadmeTable)
    app.add_directive("console-example", ConsoleExample)
    app.connect("autodoc-process-docstring", signature_only, priority=400)
    app.connect("builder-inited", make_demo_pictures)
    app.connect("env-check-consistency", check_public_names)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
