"""`pocketrec train` and `pocketrec export` from the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pocketrec.cli import main


def test_training_into_a_pipe_logs_stage_lines_without_progress_spam(tmp_path: Path) -> None:
    # What a CI log or `make demo > log 2>&1` gets: no bars, no runtime chatter.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    args = ["train", "--synthetic", "60", "--synthetic-items", "80", "--epochs", "1"]
    args += ["--dim", "8", "--history-length", "6", "--out", str(tmp_path / "run")]
    done = subprocess.run(
        [sys.executable, "-m", "pocketrec.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    assert done.stderr.splitlines()[0] == "baselines (tuned on validation) ..."
    assert "epoch 1/1: loss " in done.stderr
    assert len(done.stderr) < 1000, done.stderr
    assert re.search(r"\| pocketrec \((attention|mean|linear)\) \|", done.stdout)
    assert re.search(
        r"^pocketrec \(\w+\), test NDCG@10 against [\w-]+, the best baseline on validation: "
        r"[+-]\d+\.\d% ± \d+\.\d% \(standard error over \d+ users, paired\)$",
        done.stdout,
        re.MULTILINE,
    ), done.stdout


@pytest.mark.parametrize("command", ["train", "export"])
def test_commands_have_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_train_then_export_writes_a_bundle_the_sdk_opens(tmp_path: Path) -> None:
    from pocketrec.sdk import Recommender
    from pocketrec.training import TrainedModel

    run = tmp_path / "run"
    args = ["train", "--synthetic", "60", "--synthetic-items", "40", "--out", str(run)]
    args += ["--epochs", "1", "--dim", "8", "--history-length", "6", "--quiet"]
    assert main([*args, "--no-baselines"]) == 0
    assert (run / "model" / "model.json").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"valid", "test"}

    assert main(["export", "--model", str(run), "--out", str(tmp_path / "bundle")]) == 0
    trained = TrainedModel.load(run / "model")
    histories = [np.array([0, 1, 2], np.int32), np.array([], np.int32)]
    with Recommender.open(tmp_path / "bundle") as recommender:
        assert recommender.manifest["metrics"]["test"] == metrics["test"]
        np.testing.assert_allclose(
            recommender.score_rows(histories), trained.score(histories), atol=1e-4
        )


def test_export_reports_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--model", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "not a saved pocketrec model" in capsys.readouterr().err


def test_train_with_tune_records_its_trials_in_the_saved_model(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--synthetic", "60", "--synthetic-items", "40", "--out", str(run)]
    args += ["--objective", "sequence", "--epochs", "1", "--dim", "8", "--history-length", "6"]
    # A second trial starts only if the first's time fits again in the budget: half a
    # minute leaves room for first trials of up to 15 s (5 s on these 2-core machines).
    assert main([*args, "--tune", "0.5", "--quiet", "--no-baselines"]) == 0
    document = json.loads((run / "model" / "model.json").read_text())
    tuned = document["train_config"]["tune"]
    assert tuned["budget_seconds"] == pytest.approx(30.0)
    assert tuned["trials"][0]["changes"] == {}
    assert len(tuned["trials"]) >= 2
    trial_runs = {path.name for path in (run / "tensorboard").glob("trial-*")}
    assert trial_runs == {f"trial-{n}" for n in range(1, len(tuned["trials"]))}


def test_train_refuses_a_negative_tune_budget(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", "--synthetic", "60", "--out", "unused", "--tune", "-1"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "expected minutes >= 0, got '-1'" in capsys.readouterr().err
