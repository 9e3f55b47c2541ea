from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from _sdk_fixtures import write_tiny_bundle

from pocketrec.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("demo", "train", "export", "compress", "recommend", "bench")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--help"])
    assert exit_info.value.code == 0
    assert f"pocketrec {command}" in capsys.readouterr().out


def test_console_script_lists_commands_without_loading_tensorflow():
    code = (
        "import sys; from pocketrec.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "assert 'tensorflow' not in sys.modules, 'pocketrec --help loaded TensorFlow'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert command in done.stdout


def test_readme_sdk_snippet_runs_against_a_bundle(tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    snippet = next(
        block
        for block in re.findall(r"```python\n(.*?)```", readme, re.S)
        if "Recommender" in block
    )
    bundle = tmp_path / "runs" / "demo" / "bundle"
    write_tiny_bundle(bundle)
    # The README's example ids are MovieLens ids; the tiny bundle's ids are m0, m1, ...
    snippet = re.sub(r'"(50|181|258)"', lambda m: f'"m{int(m.group(1)) % 20}"', snippet)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)
    assert (tmp_path / "history.sqlite").is_file()


def test_readme_quick_start_shows_exactly_the_two_make_commands():
    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make (\w+)", quick_start, re.M)
    assert commands == ["demo", "test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")
