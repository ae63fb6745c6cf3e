"""The scissorhands CLI: bad input gives one clear line and exit 2, nothing written."""
import subprocess
import sys

import numpy as np
import pytest

from orchestrator.cli import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "svhn"], "unknown dataset 'svhn'; allowed: mnist5k, cifar10, npz:PATH"),
        (["--model", "vgg16"], "unknown model 'vgg16'; allowed: resnet18, resnet20, resnet8"),
        (["--dataset", "npz:/nonexistent/data.npz"], "file not found"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "no such directory"),
        (["--trim-ratio", "1.5"], "--trim-ratio 1.5: must be in (0, 1)"),
        (["--trim-ratio", "0"], "--trim-ratio 0.0: must be in (0, 1)"),
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
