import pickle

import numpy as np
import pytest
import torch

from orchestrator.datasets import load_dataset
from orchestrator.datasets.cifar10 import load_cifar10
from orchestrator.datasets.mnist5k import load_mnist5k
from orchestrator.forget import ForgetSpec, split_forget
from orchestrator.errors import UserError


def test_mnist5k_is_the_real_bundled_digits_with_a_fixed_split():
    ds = load_mnist5k()
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.x_train.dtype == torch.uint8 and ds.num_classes == 10
    assert sorted(torch.unique(ds.y_train).tolist()) == list(range(10))
    # Real digits: mean intensity of MNIST is ~33/255, most pixels are background.
    assert 20 < ds.x_train.float().mean() < 45
    again = load_mnist5k()
    assert torch.equal(ds.x_test, again.x_test) and ds.fingerprint() == again.fingerprint()
    assert load_mnist5k(split_seed=1).fingerprint() != ds.fingerprint()


def test_forget_specs_random_is_seeded_and_class_takes_every_sample():
    ds = load_mnist5k()
    a = split_forget(ds, ForgetSpec.parse("random:0.1"), seed=0)
    b = split_forget(ds, ForgetSpec.parse("random:0.1"), seed=0)
    c = split_forget(ds, ForgetSpec.parse("random:0.1"), seed=1)
    assert len(a.forget_idx) == 400 and len(a.retain_idx) == 3600
    assert torch.equal(a.forget_idx, b.forget_idx) and not torch.equal(a.forget_idx, c.forget_idx)
    cls = split_forget(ds, ForgetSpec.parse("class:3"), seed=0)
    assert (cls.y_forget == 3).all() and (cls.y_retain != 3).all()
    assert len(cls.forget_idx) == int((ds.y_train == 3).sum())
    x_test, y_test = cls.test_set()
    assert (y_test != 3).all() and len(y_test) == int((ds.y_test != 3).sum())


def test_mislabeled_forget_set_carries_wrong_labels_only_in_training():
    ds = load_mnist5k()
    a = split_forget(ds, ForgetSpec.parse("mislabeled:0.1"), seed=0)
    again = split_forget(ds, ForgetSpec.parse("mislabeled:0.1"), seed=0)
    rand = split_forget(ds, ForgetSpec.parse("random:0.1"), seed=0)
    assert str(a.forget) == "mislabeled:0.1" and len(a.forget_idx) == 400
    assert torch.equal(a.forget_idx, rand.forget_idx) and torch.equal(a.y_forget, again.y_forget)
    true = ds.y_train[a.forget_idx]
    assert (a.y_forget != true).all() and a.y_forget.min() >= 0 and a.y_forget.max() < 10
    assert len(torch.unique(a.y_forget - true)) > 5  # wrong labels spread over the other classes
    assert torch.equal(a.y_retain, ds.y_train[a.retain_idx])  # the rest keeps its labels
    assert torch.equal(a.dataset.y_test, ds.y_test) and a.dataset.fingerprint() != ds.fingerprint()


@pytest.mark.parametrize(
    "text, message",
    [
        ("mislabeled:1", "fraction must be in (0, 1)"),
        ("random:1.5", "fraction must be in (0, 1)"),
        ("random:0", "fraction must be in (0, 1)"),
        ("class:x", "allowed random:FRACTION"),
        ("everything", "allowed random:FRACTION"),
    ],
)
def test_bad_forget_specs(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ForgetSpec.parse(text)


def test_forget_class_not_in_data_and_whole_training_set():
    ds = load_mnist5k()
    with pytest.raises(UserError, match=r"class:12: class not in the data"):
        split_forget(ds, ForgetSpec.parse("class:12"), 0)
    x = np.random.default_rng(0).integers(0, 255, (20, 8, 8), dtype=np.uint8)
    one_class = load_dataset_from_arrays(x, np.zeros(20, dtype=np.int64))
    with pytest.raises(UserError, match="whole training set"):
        split_forget(one_class, ForgetSpec.parse("class:0"), 0)
    with pytest.raises(UserError, match="selects no training sample"):
        split_forget(one_class, ForgetSpec.parse("random:0.001"), 0)


def load_dataset_from_arrays(x, y):
    from orchestrator.datasets import make_dataset

    return make_dataset("arrays", x, y, x[:2], y[:2], natural=False)


def _write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    return batch


def test_cifar10_reader_on_files_in_the_standard_pickle_format(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    b1 = _write_cifar_batch(root / "data_batch_1", 12, 0)
    _write_cifar_batch(root / "data_batch_2", 8, 1)
    test = _write_cifar_batch(root / "test_batch", 5, 2)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (5, 3, 32, 32)
    assert ds.natural_images and ds.channels == 3
    # Row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32.
    first = b1[b"data"][0].reshape(3, 32, 32)
    assert torch.equal(ds.x_train[0], torch.from_numpy(first))
    assert ds.y_test.tolist() == list(test[b"labels"])


def test_cifar10_errors(tmp_path):
    with pytest.raises(UserError, match="needs --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(UserError, match="no such directory"):
        load_dataset("cifar10", str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no CIFAR-10 batches"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a CIFAR-10 python batch"):
        load_cifar10(tmp_path)


def test_npz_with_seeded_split_and_with_given_test_arrays(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 10, 10, 3), dtype=np.uint8)
    y = rng.integers(0, 4, 50)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    assert ds.x_train.shape == (40, 3, 10, 10) and ds.x_test.shape == (10, 3, 10, 10)
    assert load_dataset(f"npz:{tmp_path / 'a.npz'}").fingerprint() == ds.fingerprint()
    np.savez(tmp_path / "b.npz", x=x[:, :, :, 0], y=y, x_test=x[:7, :, :, 0], y_test=y[:7])
    ds2 = load_dataset(f"npz:{tmp_path / 'b.npz'}")
    assert ds2.x_train.shape == (50, 1, 10, 10) and ds2.x_test.shape == (7, 1, 10, 10)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((5, 4, 4), np.float32), "y": np.zeros(5, int)}, "'x' must be uint8"),
        ({"x": np.zeros((5, 4, 4), np.uint8), "y": np.zeros(4, int)}, "'y' must be 5 non-negative int labels"),
        ({"x": np.zeros((5, 4, 4), np.uint8)}, "needs arrays 'x' and 'y'"),
        ({"x": np.zeros((5, 4, 4), np.uint8), "y": np.zeros(5, int), "x_test": np.zeros((2, 4, 4), np.uint8)},
         "needs arrays 'x_test' and 'y_test'"),
    ],
)
def test_malformed_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=message):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_unknown_dataset_and_missing_or_corrupt_npz(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'svhn'; allowed: mnist5k, cifar10, npz:PATH"):
        load_dataset("svhn")
    with pytest.raises(UserError, match="file not found"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
