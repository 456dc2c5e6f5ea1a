"""The README and docs/*.md are checked like code: every relative link and image resolves to a file
of the repository and every ``#anchor`` to a heading of its page (GitHub's slugs); every
``queue-contrast`` command in them names a real subcommand and only its real options (read from
the click commands); every ``python -m benchmarks`` command only real sections and options; every
``python -m pytest`` command only test files that exist. The service blocks themselves are run by
``tests/test_readme.py``."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import click
import pytest

from apps.cli.main import main as cli
from benchmarks import run as bench

ROOT = Path(__file__).resolve().parent.parent
COMMAND_BLOCKS = {"bash", "sh", "shell", "console", "text"}  # ```console: only `$ ` lines
FENCE = re.compile(r"^\s*```\s*([\w-]*)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
HTML_TARGET = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"")
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:name|id)=\"([^\"]+)\"")
INLINE_CODE = re.compile(r"`([^`]+)`")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass
class Page:
    path: Path
    prose: str  # the text with every fenced block's lines blanked (so line numbers still hold)
    blocks: list[tuple[str, list[str]]]  # (language, lines) of each fenced block

    @classmethod
    def read(cls, path: Path, text: str | None = None) -> Page:
        text = path.read_text() if text is None else text
        prose: list[str] = []
        blocks: list[tuple[str, list[str]]] = []
        inside: list[str] | None = None
        for line in text.split("\n"):
            fence = FENCE.match(line)
            if fence and inside is None:
                inside = []
                blocks.append((fence.group(1).lower(), inside))
            elif fence and inside is not None and line.strip() == "```":
                inside = None
            elif inside is not None:
                inside.append(line)
            if inside is not None or fence:
                line = ""
            prose.append(line)
        return cls(path, "\n".join(prose), blocks)

    def name(self) -> str:
        return str(self.path.relative_to(ROOT))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text, lower-cased, with everything but
    letters, digits, spaces, ``-`` and ``_`` dropped and each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"\*+|~~|(?<!\w)_+|_+(?!\w)", "", text)  # emphasis markers, not snake_case
    return "".join(c for c in text.strip().lower() if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(page: Page) -> set[str]:
    """Every anchor GitHub gives the page: its headings' slugs (a repeated one gets ``-1``,
    ``-2``, ...) and explicit ``<a name=...>`` / ``id=...`` anchors."""
    found: set[str] = set(HTML_ANCHOR.findall(page.prose))
    seen: dict[str, int] = {}
    for line in page.prose.split("\n"):
        heading = HEADING.match(line)
        if heading:
            base = slug(heading.group(1))
            found.add(base if base not in seen else f"{base}-{seen[base]}")
            seen[base] = seen.get(base, 0) + 1
    return found


def link_targets(page: Page) -> list[str]:
    prose = INLINE_CODE.sub("", page.prose)  # a link inside `code` is not a link
    found = LINK.findall(prose) + REFERENCE.findall(prose) + HTML_TARGET.findall(prose)
    return [t for t in found if not SCHEME.match(t)]


def link_problems(page: Page) -> list[str]:
    """One line per relative link or image of the page that does not resolve."""
    problems = []
    for target in link_targets(page):
        path_part, _, anchor = target.partition("#")
        where = (page.path.parent / unquote(path_part)).resolve() if path_part else page.path
        if path_part and (not where.is_relative_to(ROOT) or not where.exists()):
            problems.append(f"{page.name()}: {target}: no such file in the repository")
        elif anchor and (not path_part or where.suffix == ".md"):
            target_page = Page.read(where) if path_part else page
            if unquote(anchor) not in anchors(target_page):
                problems.append(f"{page.name()}: {target}: no heading of {where.name} has it")
    return problems


def command_lines(page: Page) -> Iterator[str]:
    """Each shell command line of the page's bash/console/text blocks (``$ `` prompts stripped,
    ``\\`` continuations joined; in a console block only the prompted lines), then each inline
    code span of its prose."""
    for language, lines in page.blocks:
        if language not in COMMAND_BLOCKS:
            continue
        command: str | None = None
        for line in lines:
            if command is not None:  # the continuation of the line before
                command += " " + line.strip()
            elif language == "console":
                command = line[2:] if line.startswith("$ ") else None
            else:
                command = line
            if command is not None and not command.endswith("\\"):
                yield command
                command = None
            elif command is not None:
                command = command[:-1]
    for span in INLINE_CODE.findall(page.prose):
        if "\n\n" not in span:
            yield span.replace("\n", " ")


def invocations(line: str, program: str) -> Iterator[list[str]]:
    """The arguments of each ``program`` command in a shell line: from the program's name up to
    the first ``;``, ``|``, ``&``, ``>``, ``<``, ``(``, ``)`` or comment (so env assignments
    before it, a trailing ``&`` and ``$(...)`` around it all fall away)."""
    for found in re.finditer(rf"(?<![\w./-]){re.escape(program)}(?=\s|$)", line):
        lexer = shlex.shlex(line[found.end() :], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True  # words split only at spaces and at the operators above
        args = []
        with contextlib.suppress(ValueError):  # an unclosed quote after the command ends
            for token in lexer:
                if token and all(c in lexer.punctuation_chars for c in token):
                    break
                args.append(token)
        yield args


def cli_problems(args: list[str]) -> list[str]:
    """What of ``queue-contrast ARGS`` the real CLI does not have: a subcommand, an option of
    the command it is given to, a value outside an option's choices."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="queue-contrast")
    path = "queue-contrast"
    problems = []
    position = 0
    while position < len(args):
        arg = args[position]
        position += 1
        if arg == "--":
            break
        params = {o: p for p in command.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
        if arg.startswith("-") and arg != "-":
            name, has_value, _ = arg.partition("=")
            param = params.get(name) or params.get(name[:2] if not name.startswith("--") else "")
            if not isinstance(param, click.Option):
                problems.append(f"{path}: no option {name}")
                continue
            if param.is_flag or param.count or has_value or param.nargs == 0:
                continue
            if position < len(args):
                value = args[position]
                position += param.nargs
                problems += choice_problems(path, name, param, value)
        elif isinstance(command, click.Group):
            sub = command.commands.get(arg)
            if sub is None:
                problems.append(f"{path}: no subcommand {arg!r}")
                break
            command, path = sub, f"{path} {arg}"
            ctx = click.Context(sub, info_name=arg, parent=ctx)
    return problems


def choice_problems(path: str, name: str, param: click.Option, value: str) -> list[str]:
    if not isinstance(param.type, click.Choice) or "$" in value:
        return []
    choices = [str(c) for c in param.type.choices]
    fold = str if param.type.case_sensitive else str.lower
    return (
        []
        if fold(value) in map(fold, choices)
        else [f"{path}: {name} {value!r} is not one of {choices}"]
    )


def benchmark_options() -> set[str]:
    """The options ``python -m benchmarks --help`` lists (its parser, asked)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        bench.main(["--help"])
    listed = [line.strip().split("  ")[0] for line in out.getvalue().split("\n")]
    return {o for line in listed if line.startswith("-") for o in re.findall(r"--?[\w-]+", line)}


def benchmark_problems(args: list[str], options: set[str]) -> list[str]:
    problems = []
    for position, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if arg.startswith("-") and name not in options:
            problems.append(f"python -m benchmarks: no option {name}")
        if name == "--section":
            section = value or (args[position + 1] if position + 1 < len(args) else "")
            if section not in bench.SECTIONS:
                problems.append(f"python -m benchmarks: no section {section!r} {bench.SECTIONS}")
    return problems


def all_pages() -> list[Page]:
    return [Page.read(p) for p in pages()]


def all_commands(program: str) -> list[tuple[Page, list[str]]]:
    return [
        (page, args)
        for page in all_pages()
        for line in command_lines(page)
        for args in invocations(line, program)
    ]


def test_every_relative_link_and_anchor_resolves() -> None:
    """Every relative link and image in README.md and docs/*.md names a file of the repository,
    and every #anchor (same page or page.md#anchor) a heading of the page it points to."""
    checked = [t for page in all_pages() for t in link_targets(page)]
    problems = [line for page in all_pages() for line in link_problems(page)]
    assert not problems, "\n".join(problems)
    assert len(checked) >= 30, f"only {len(checked)} links found: is the link pattern broken?"


def test_every_queue_contrast_command_uses_real_subcommands_and_options() -> None:
    """Every ``queue-contrast`` command in the docs' shell blocks and inline code names a
    subcommand the CLI has and only options (and choice values) that subcommand has."""
    commands = all_commands("queue-contrast")
    problems = [f"{page.name()}: {p}" for page, args in commands for p in cli_problems(args)]
    assert not problems, "\n".join(problems)
    assert len(commands) >= 30, f"only {len(commands)} commands found: is the parsing broken?"


def test_every_benchmarks_command_names_real_sections_and_options() -> None:
    """Every ``python -m benchmarks`` command in the docs uses only sections in
    ``benchmarks.run.SECTIONS`` and options its parser has."""
    options = benchmark_options()
    commands = [
        (page, args[2:])
        for page, args in all_commands("python")
        if args[:2] == ["-m", "benchmarks"]
    ]
    problems = [
        f"{page.name()}: {p}" for page, args in commands for p in benchmark_problems(args, options)
    ]
    assert not problems, "\n".join(problems)
    assert any("--section" in args for _, args in commands), "no --section command found"


def test_every_pytest_command_names_test_files_that_exist() -> None:
    """Every ``python -m pytest`` command in the docs names only test files that exist."""
    commands = [
        (page, args[2:]) for page, args in all_commands("python") if args[:2] == ["-m", "pytest"]
    ]
    problems = [
        f"{page.name()}: python -m pytest {arg}: no such file"
        for page, args in commands
        for arg in args
        if arg.endswith(".py") and not (ROOT / arg.split("::")[0]).is_file()
    ]
    assert not problems, "\n".join(problems)
    assert len(commands) >= 4, f"only {len(commands)} pytest commands found"


def test_the_checks_catch_a_broken_link_a_wrong_anchor_and_a_misspelled_option() -> None:
    """Each check reports what it exists to find: a missing file, a heading that is not there,
    an unknown subcommand, option or choice, an unknown benchmark section."""
    page = Page.read(
        ROOT / "docs" / "example.md",
        "# A `page`: title\n\n## Twice\n\n## Twice\n\n"
        "[ok](#a-page-title) [ok](#twice-1) [ok](../README.md#quickstart) ![ok](dashboard.png)\n"
        "[bad](no-such.md) ![bad](no-such.png) [bad](#no-such-heading)\n"
        "[bad](../README.md#no-such) `[not](a-link)`\n\n"
        "```console\n$ queue-contrast submit --wiat \\\n    --api http://x/ URL\nok --nope\n```\n"
        "```bash\nFOO=1 queue-contrast jobs --order newst &  # --comment\nqueue-contrast frobnicate\n```\n",
    )
    assert [p.split(": ", 1)[1] for p in link_problems(page)] == [
        "no-such.md: no such file in the repository",
        "no-such.png: no such file in the repository",
        "#no-such-heading: no heading of example.md has it",
        "../README.md#no-such: no heading of README.md has it",
    ]
    found = [
        cli_problems(args)
        for line in command_lines(page)
        for args in invocations(line, "queue-contrast")
    ]
    assert found == [
        ["queue-contrast submit: no option --wiat"],
        ["queue-contrast jobs: --order 'newst' is not one of ['oldest', 'newest']"],
        ["queue-contrast: no subcommand 'frobnicate'"],
    ]
    assert benchmark_problems(["--section", "latncy", "--quik"], benchmark_options()) == [
        f"python -m benchmarks: no section 'latncy' {bench.SECTIONS}",
        "python -m benchmarks: no option --quik",
    ]
