"""Issue 25: every code block of the README and docs/ is checked by a test.

A block's fence names its kind (tests/docblocks.py). Here: no document has a block
without one; every `sh` block (and every `$ ` line of a `console` block) parses with
`bash -n`; every command's program exists (on the PATH, in this interpreter's venv, in
the checkout, or in a venv an earlier line of the same block makes); every
`supervisord-batt` command line parses with the CLI's own parser; every `yaml` block
loads, and one made of the daemon's sections loads with the config loader. The `python`
blocks run against a real daemon in tests/integration/test_docs_python.py, the
`protocol` blocks are held to the protocol's types in tests/unit/test_protocol_doc.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from supervisord_batt.cli.main import build_parser
from supervisord_batt.config.loader import load_config_text
from tests import docblocks
from tests.docblocks import Block
from tests.helpers import REPO

# The PATH a command of the documents runs with: this interpreter's venv (README's
# commands activate it), the caller's, and root's sbin directories (the documents'
# commands are an operator's, as root).
DOC_PATH = os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin:/sbin"]
)
BUILTINS = {".", "source", "cd", "export", "set", "echo", "exit", "true", "false", "test"}
CONFIG_SECTIONS = {"daemon", "budget", "metrics", "programs"}


def _ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


SHELL = docblocks.all_blocks("sh") + docblocks.all_blocks("console")


# -- every block has a kind --------------------------------------------------------------


@pytest.mark.parametrize("document", docblocks.checked_documents())
def test_every_block_of_a_document_is_fenced_with_its_kind(document: str) -> None:
    text = (REPO / document).read_text()
    assert docblocks.indented_blocks(text) == [], f"{document}: indented code blocks"
    unknown = [
        (b.line, b.kind) for b in docblocks.blocks(document) if b.kind not in docblocks.KINDS
    ]
    assert unknown == [], f"{document}: blocks of no known kind (fence them as one of "
    f"{docblocks.KINDS})"


def test_the_documents_not_yet_fenced_are_still_the_other_branchs() -> None:
    """An exception that outlives its reason is a hole: once a listed document has its
    fences, it must leave the list (and be checked like the others)."""
    for document in docblocks.NOT_YET_FENCED:
        text = (REPO / document).read_text()
        assert docblocks.indented_blocks(text), f"{document} is fenced now: check it"


def test_the_checks_see_every_kind_of_block() -> None:
    kinds = {b.kind for b in docblocks.all_blocks()}
    assert set(docblocks.KINDS) <= kinds
    assert {b.document for b in docblocks.all_blocks("python")} >= {"README.md"}


# -- shell -------------------------------------------------------------------------------


@pytest.mark.parametrize("block", SHELL, ids=_ids(SHELL))
def test_every_shell_block_parses(block: Block) -> None:
    script = docblocks.shell_text(block)
    assert script.strip(), f"{block.where}: no command"
    done = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert done.returncode == 0, f"{block.where}: {done.stderr}"


def missing_programs(script: str) -> list[str]:
    """The programs of a script that cannot be found (see the module's docstring)."""
    made = docblocks.venvs_made(script)
    missing = []
    for words in docblocks.commands(script):
        program = words[0]
        if program in BUILTINS:
            continue
        if program.startswith(".venv/bin/"):  # README's venv: this interpreter's
            program = program.removeprefix(".venv/bin/")
        script_arg = words[1] if program.startswith("python") and len(words) > 1 else ""
        if docblocks.resolve(program, DOC_PATH, made) is None:
            missing.append(program)
        elif script_arg.endswith(".py") and not (REPO / script_arg).is_file():
            missing.append(script_arg)
    return missing


@pytest.mark.parametrize("block", SHELL, ids=_ids(SHELL))
def test_every_command_of_a_shell_block_exists(block: Block) -> None:
    assert missing_programs(docblocks.shell_text(block)) == [], block.where


def cli_problems(script: str) -> list[str]:
    """Each `supervisord-batt` (or `python3 -m supervisord_batt`) command line that the
    CLI's parser refuses, with what it said."""
    problems = []
    for words in docblocks.commands(script):
        name = Path(words[0]).name
        if name == "supervisord-batt":
            argv = words[1:]
        elif name.startswith("python") and words[1:3] == ["-m", "supervisord_batt"]:
            argv = words[3:]
        else:
            continue
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
            build_parser().parse_args(argv)
            continue
        problems.append(f"{' '.join(words)}: {err.getvalue().strip().splitlines()[-1]}")
    return problems


@pytest.mark.parametrize("block", SHELL, ids=_ids(SHELL))
def test_every_supervisord_batt_command_line_parses(block: Block) -> None:
    assert cli_problems(docblocks.shell_text(block)) == [], block.where


def test_the_shell_checks_catch_a_missing_program_and_a_bad_option() -> None:
    assert missing_programs("supervisord-batt status && no-such-program-x --help\n") == [
        "no-such-program-x"
    ]
    assert missing_programs("python3 benchmarks/no_such_bench.py\n") == [
        "benchmarks/no_such_bench.py"
    ]
    assert missing_programs("python3 -m venv /opt/x\n/opt/x/bin/pip install .\n") == []
    assert cli_problems("supervisord-batt logs -f --program p\n") == []
    (problem,) = cli_problems("supervisord-batt check-config F\nsupervisord-batt statu\n")
    assert problem.startswith("supervisord-batt statu: ")
    (problem,) = cli_problems("supervisord-batt report --since 1d [--json] | less\n")
    assert "[--json]" in problem


# -- yaml --------------------------------------------------------------------------------

YAML = docblocks.all_blocks("yaml")


@pytest.mark.parametrize("block", YAML, ids=_ids(YAML))
def test_every_yaml_block_loads_and_a_config_fragment_with_the_loader(block: Block) -> None:
    data = yaml.safe_load(block.text)
    assert isinstance(data, dict), block.where
    if set(data) <= CONFIG_SECTIONS:
        load_config_text(block.text, block.where)


def test_the_yaml_check_catches_a_bad_config_fragment() -> None:
    from supervisord_batt.config.yamlcheck import ConfigError

    (bad,) = docblocks.blocks_of("```yaml\ndaemon:\n  socket_mode: rw\n```\n", "x.md")
    with pytest.raises(ConfigError):
        test_every_yaml_block_loads_and_a_config_fragment_with_the_loader(bad)


# -- the README's two commands -----------------------------------------------------------


def test_the_readme_commands_make_and_use_the_checkouts_venv() -> None:
    """Issue 25: Debian's python3 refuses pip outside a venv (PEP 668). Each command makes
    .venv, activates it (the demo workers' `python3` is then the venv's) and installs
    into it; .ci/run runs the test command verbatim."""
    run = docblocks.first_block("README.md", "**Run the daemon** with the shipped config,").text
    test = docblocks.first_block("README.md", "**Run the tests** (about 5 minutes on 2 cores;")
    prefix = "python3 -m venv .venv && . .venv/bin/activate && pip install -e "
    assert run.strip() == prefix + ". && supervisord-batt run"
    assert test.text.strip() == prefix + "'.[test]' && python3 -m pytest"
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == test.text.strip()
    assert ".venv/" in (REPO / ".gitignore").read_text().splitlines()
