"""The README and docs/ stay true: links inside the repo, real CLI commands, valid GraphQL."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from graphql import parse, validate

from bench.run import parse_args as bench_args
from gateway.cli import main
from schema import schema

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [
    ROOT / "README.md",
    ROOT / "bench" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
]
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.S | re.M)
_HEADING = re.compile(r"^#+ (.+)$", re.M)
# Where one shell command ends and the next (or a pipe, or a redirect) begins.
_COMMAND_ENDS = {"|", "||", "&&", ";", ">", ">>", "<", "&"}


def fenced(document: Path, language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(document.read_text()) if lang == language]


def anchors(document: Path) -> set[str]:
    """The #fragments of the document's headings, as GitHub makes them."""
    return {
        re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        for heading in _HEADING.findall(document.read_text())
    }


def cli_calls(document: Path) -> list[list[str]]:
    """Each `entitlements …` command in the document's bash blocks, as words after the name."""
    calls = []
    for block in fenced(document, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.commenters = "#"
            words = list(lexer)
            for i, word in enumerate(words):
                name = word.removeprefix("$(")
                # The command or the virtualenv's; not a URL whose database is called that.
                if name in ("entitlements", "bin/entitlements") or name.endswith(
                    "/bin/entitlements"
                ):
                    rest = words[i + 1 :]
                    end = next((j for j, w in enumerate(rest) if w in _COMMAND_ENDS), len(rest))
                    calls.append(rest[:end])
    return calls


def bench_calls(document: Path) -> list[list[str]]:
    """Each `python -m bench …` command in the document's bash blocks, as its arguments."""
    calls = []
    for block in fenced(document, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            # Plain splitting: a comma-separated list is one argument, as the shell passes it.
            words = shlex.split(line, comments=True)
            for i in range(len(words) - 2):
                if words[i].endswith("python") and words[i + 1 : i + 3] == ["-m", "bench"]:
                    rest = words[i + 3 :]
                    end = next((j for j, w in enumerate(rest) if w in _COMMAND_ENDS), len(rest))
                    calls.append(rest[:end])
    return calls


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The CLI command the words name, and the words left for its options and arguments."""
    command: click.Command = main
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        name = words[0]
        assert name in command.commands, f"`entitlements … {name}` is not a command"
        command, words = command.commands[name], words[1:]
    # A group alone takes only its own options (`entitlements --version`).
    assert not isinstance(command, click.Group) or (
        words and all(w.startswith("-") for w in words)
    ), f"`{command.name}` needs a subcommand"
    return command, words


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_stay_inside_the_repository_and_exist(document: Path) -> None:
    for target in _LINK.findall(document.read_text()):
        if target.startswith(("http://127.0.0.1", "http://localhost")):
            continue
        if target.startswith("#"):
            assert target[1:] in anchors(document), f"{document.name}: no heading for {target}"
            continue
        assert "://" not in target, f"{document.name} links outside the repository: {target}"
        path = (document.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT), f"{document.name} leaves the repository: {target}"
        assert path.exists(), f"{document.name} links to a missing file: {target}"
    assert "../shared" not in document.read_text()


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documented_cli_commands_and_options_exist(document: Path) -> None:
    calls = cli_calls(document)
    for words in calls:
        command, rest = resolve(words)
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        for word in rest:
            option = word.strip("[]").split("=")[0]
            if option.startswith("--"):
                assert option in known, f"`{command.name}` has no option {option}"
    if document in (ROOT / "README.md", ROOT / "docs" / "support.md"):
        assert calls, f"{document.name} documents no CLI command: the parser is broken"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documented_benchmark_commands_parse(document: Path) -> None:
    """The benchmark's own argument parser accepts every documented `python -m bench` call."""
    calls = bench_calls(document)
    for words in calls:
        if "--help" in words:
            continue
        try:
            bench_args(words)
        except SystemExit as exc:  # argparse refused a flag or a value, having said which
            pytest.fail(f"{document.name}: `python -m bench {' '.join(words)}` exits {exc.code}")
    if document.parent.name == "bench":
        assert len(calls) >= 5, "bench/README.md documents no run: the parser is broken"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_documented_graphql_is_valid_against_the_schema(document: Path) -> None:
    for block in fenced(document, "graphql"):
        errors = validate(schema._schema, parse(block))
        assert not errors, f"{document.name}: {errors[0].message}\n{block}"


def test_resolve_refuses_a_command_that_does_not_exist() -> None:
    with pytest.raises(AssertionError, match="not a command"):
        resolve(["user", "delete", "someone@example.com"])
