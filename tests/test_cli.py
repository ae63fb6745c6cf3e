"""The scissorhands CLI: bad input gives one clear line and exit 2, nothing written."""
import subprocess
import sys

import numpy as np
import pytest

from orchestrator.cli import main
from tests.measured import cli_report


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "svhn"], "unknown dataset 'svhn'; allowed: mnist5k, cifar10, npz:PATH"),
        (["--model", "vgg16"], "unknown model 'vgg16'; allowed: resnet18, resnet20, resnet8"),
        (["--dataset", "npz:/nonexistent/data.npz"], "file not found"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "no such directory"),
        (["--trim-ratio", "1.5"], "--trim-ratio 1.5: must be in (0, 1)"),
        (["--trim-ratio", "0"], "--trim-ratio 0.0: must be in (0, 1)"),
        (["--train-lr", "-1"], "--train-lr -1.0: must be a positive number"),
        (["--init", "normal"], "--init 'normal': allowed kaiming_uniform, zeros"),
        (["--forget", "class:11"], "class:11: class not in the data"),
        (["--forget", "random:0.00001"], "selects no training sample"),
        (["--projection-scope", "layerwise"], "allowed global, per_layer"),
        (["--preset", "fast"], "--preset 'fast': allowed auto, reference"),
        (["--json", "/nonexistent/dir/out.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_clear_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, message):
    cache = tmp_path / "cache"
    code = main(["unlearn", "--cache-dir", str(cache), "--json", str(tmp_path / "out.json"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err
    assert not cache.exists() and not (tmp_path / "out.json").exists()


def test_whole_training_set_and_malformed_npz(tmp_path, capsys):
    x = np.zeros((30, 6, 6), np.uint8)
    np.savez(tmp_path / "one_class.npz", x=x, y=np.zeros(30, int))
    np.savez(tmp_path / "bad.npz", x=x.astype(np.float32), y=np.zeros(30, int))
    for name, message in [("one_class", "selects the whole training set"), ("bad", "'x' must be uint8")]:
        code = main(["unlearn", "--cache-dir", str(tmp_path / "c"), "--dataset", f"npz:{tmp_path / name}.npz",
                     "--forget", "class:0"])
        assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_console_script_exit_code_and_argparse_errors(tmp_path):
    exe = [sys.executable, "-m", "orchestrator.cli"]
    bad = subprocess.run([*exe, "unlearn", "--trim-ratio", "-0.2", "--cache-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "scissorhands: error: --trim-ratio -0.2: must be in (0, 1)"
    typo = subprocess.run([*exe, "unlearn", "--trim-ratio", "abc"], capture_output=True, text=True)
    assert typo.returncode == 2 and "invalid float value: 'abc'" in typo.stderr


def test_method_help_lists_that_methods_knobs(capsys):
    with pytest.raises(SystemExit) as done:
        main(["unlearn", "--method", "salun", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "--mask-ratio" in out and "method salun" in out and "--trim-ratio" not in out


def test_library_errors_name_the_field_and_only_the_cli_names_the_flag():
    import pickle

    from orchestrator.tasks.classification.config import RunConfig
    from orchestrator.training import TrainRecipe
    from orchestrator.errors import FieldError, within
    from orchestrator.flags import flag_for
    from orchestrator.methods import get_method

    with pytest.raises(FieldError, match=r"^trim_ratio 2.0: must be in \(0, 1\)$") as err:
        get_method("scissorhands").config(trim_ratio=2.0)
    assert (err.value.field, err.value.value, err.value.rule) == ("trim_ratio", 2.0, "must be in (0, 1)")
    assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)
    with pytest.raises(FieldError, match=r"^recipe.lr -1: must be a positive number$"):
        RunConfig(recipe=TrainRecipe(lr=-1)).validate()
    with pytest.raises(FieldError, match=r"^init 'normal': allowed"):
        get_method("scissorhands").config(init="normal")
    with pytest.raises(FieldError, match=r"^a.b.momentum 1: must be in \[0, 1\)$"):
        with within("a"), within("b"):
            raise FieldError("momentum", 1, "must be in [0, 1)")
    knobs = get_method("scissorhands").config_class
    assert flag_for("trim_ratio", RunConfig, knobs) == "--trim-ratio"
    assert flag_for("recipe.lr", RunConfig, knobs) == "--train-lr"
    assert flag_for("no_such_field", RunConfig) == "--no-such-field"

    class Renamed(RunConfig):
        FLAG_NAMES = {"forget": "--forget-set"}

    assert flag_for("forget", Renamed) == "--forget-set"


# Every Scissorhands flag the suite does not otherwise run: flag -> (value given, knob value read back).
KNOB_FLAGS = {
    "--projection-scope": ("per_layer", "per_layer"), "--memory-bn-mode": ("train", "train"),
    "--score-bn-mode": ("eval", "eval"), "--init": ("zeros", "zeros"), "--project-every": ("2", 2),
    "--memory-batches": ("3", 3), "--projection-eps": ("0.01", 0.01), "--project-layers": ("^fc\\.", ("^fc\\.",)),
}


def test_scissorhands_flags_reach_the_knobs_over_the_preset():
    from orchestrator.cli import build_parser, run_config
    from orchestrator.methods import get_method
    from orchestrator.tasks import get_task

    argv = ["unlearn", "--preset", "reference", "--epochs", "1"]
    for flag, (given, _) in KNOB_FLAGS.items():
        argv += [flag, given]
    cfg = run_config(build_parser().parse_args(argv), get_task("classification"), get_method("scissorhands"))
    for flag, (_, expected) in KNOB_FLAGS.items():
        assert getattr(cfg.knobs, flag[2:].replace("-", "_")) == expected, flag
    # Everything else is the reference preset's (not the measured small-model defaults).
    reference = get_method("scissorhands").preset("reference")
    assert cfg.knobs.trim_ratio == reference.trim_ratio == 0.03 and cfg.knobs.epochs == 1


@pytest.mark.slow
def test_train_then_unlearn_reuses_the_references_and_divergence_exits_3(tmp_path, capsys, monkeypatch):
    log = tmp_path / "builds.log"
    monkeypatch.setenv("SCISSORHANDS_BUILD_LOG", str(log))
    tiny = ["--width", "4", "--train-epochs", "1", "--forget", "class:1", "--cache-dir", str(tmp_path / "cache"),
            "--no-progress"]
    assert main(["train", *tiny]) == 0
    out = capsys.readouterr().out
    assert out.startswith("original") and "\nretrain" in out and "references cached in" in out
    assert sorted(line.split()[0] for line in log.read_text().splitlines()) == ["original", "retrain"]
    # The references are reused (nothing trained again); an exploding lr is a divergence: exit 3, one line.
    assert main(["unlearn", *tiny, "--lr", "1e30", "--epochs", "1"]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("scissorhands: diverged: loss became") and "lower --lr" in err
    assert len(log.read_text().splitlines()) == 2


def test_unlearn_says_in_one_line_when_its_defaults_cannot_help(tmp_path, shared_cache, capsys):
    """Random forgetting of a small model: the auto values are the measured do-no-harm ones, and
    the run says that no setting measured beat doing nothing; a user who sets a knob is not told."""
    cli_report(tmp_path, shared_cache, "random", "--forget", "random:0.1")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]
    assert len(lines) == 1 and "no setting measured beat doing nothing" in lines[0]
    assert "no measurable harm" in lines[0]
    cli_report(tmp_path, shared_cache, "random-knob", "--forget", "random:0.1", "--epochs", "1")
    assert "note: " not in capsys.readouterr().out
