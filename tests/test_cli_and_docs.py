from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _sdk_fixtures import write_tiny_bundle

from pocketrec._log import is_native_chatter
from pocketrec.cli import build_parser, main, printable

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (
    "demo",
    "train",
    "export",
    "compress",
    "recommend",
    "sync",
    "embed-items",
    "bench",
    "bench-sync",
    "bench-latency",
    "keys",
    "publish",
    "rollout",
    "rollback",
    "pin",
    "devices",
    "events",
    "token",
    "serve",
)


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


# Output safety, errors and the logging policy ---------------------------------------------

HOSTILE = "Movie\x1b]0;owned\x07 \x1b[2J\x1b[31mred\x1b[0m\x9b1m\x07\x00 end"


def _hostile_bundle(path: Path) -> Path:
    from _sdk_fixtures import items_metadata

    metadata = items_metadata()
    for item in metadata:
        item["title"] = HOSTILE
    return write_tiny_bundle(path, items_metadata=metadata)


def _pocketrec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The console script in a fresh process, stderr a pipe (not a terminal)."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pocketrec.cli import main; sys.exit(main())",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_printable_removes_escape_sequences_and_control_characters():
    assert printable(HOSTILE) == "Movie red end"
    assert printable("Amélie (2001)\tfr") == "Amélie (2001) fr"


def test_recommend_prints_titles_without_terminal_escapes(tmp_path, capsys):
    bundle = _hostile_bundle(tmp_path / "bundle")
    assert main(["recommend", str(bundle), "--history", "m1", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 3
    assert "Movie red" in out
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out), repr(out)


def test_recommend_json_keeps_the_title_escaped_not_raw(tmp_path, capsys):
    bundle = _hostile_bundle(tmp_path / "bundle")
    assert main(["recommend", str(bundle), "--history", "m1", "--k", "1", "--json"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out
    assert json.loads(out)["items"][0]["title"] == HOSTILE


@pytest.mark.parametrize("command", ["train", "bench", "demo"])
def test_an_unwritable_out_is_refused_before_any_work(command, tmp_path):
    code = (
        "import sys; from pocketrec.cli import main\n"
        f"status = main([{command!r}, '--synthetic', '20', '--out', '/proc/pocketrec/x'])\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow loaded before the --out check'\n"
        "sys.exit(status)\n"
    )
    if command == "demo":
        code = code.replace("'--synthetic', '20', ", "")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: cannot write to /proc/pocketrec/x: ")
    assert "Traceback" not in done.stderr


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("x")
    assert main(["export", "--model", str(tmp_path), "--out", str(file / "bundle")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write to {file / 'bundle'}")


@pytest.mark.parametrize(
    ("command", "blocked", "extra"),
    [
        (["train", "--synthetic", "30"], "tensorflow", "train"),
        (["export", "--model", "x"], "tf_keras", "train"),
        (["compress", "--list-recipes"], "tensorflow_model_optimization", "compression"),
        (["bench", "--synthetic", "30"], "matplotlib", "bench"),
    ],
)
def test_a_missing_extra_names_the_pip_command(command, blocked, extra, tmp_path):
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from pocketrec.cli import main\n"
        f"sys.exit(main({[*command, '--out', str(tmp_path / 'out')]!r}))\n"
    )
    if command[0] == "compress":
        code = code.replace(", '--out', " + repr(str(tmp_path / "out")), "")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert f"error: pocketrec {command[0]} needs " in done.stderr
    assert f"pip install 'pocketrec[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_native_chatter_is_recognised_and_real_messages_are_kept():
    chatter = [
        b"I0000 00:00:1796181770.102378    4508 port.cc:153] oneDNN custom operations are on.",
        b"E0000 00:00:1796181773.484322    4508 cuda_platform.cc:52] failed call to cuInit",
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
        b"fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, "
        b"output_inference_type: FLOAT32",
    ]
    kept = [
        b"F0000 00:00:1796181773.484322    4508 check.cc:1] Check failed: fatal",
        b"error: cannot write to /proc/x",
        b"Traceback (most recent call last):",
    ]
    assert all(is_native_chatter(line) for line in chatter)
    assert not any(is_native_chatter(line) for line in kept)


def test_runtime_chatter_is_hidden_unless_verbose(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    quiet = _pocketrec("recommend", str(bundle), "--history", "m1")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    verbose = _pocketrec("--verbose", "recommend", str(bundle), "--history", "m1")
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" in verbose.stderr
    assert verbose.stdout == quiet.stdout


def test_quiet_prints_results_and_no_warnings(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "bundle")
    args = ["recommend", str(bundle), "--history", "nope", "m1", "--k", "2"]
    normal, quiet = _pocketrec(*args), _pocketrec("--quiet", *args)
    assert "1 history ids are not in the bundle" in normal.stderr
    assert quiet.stderr == ""
    assert quiet.stdout == normal.stdout and len(quiet.stdout.splitlines()) == 2
