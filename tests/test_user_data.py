"""Data as users keep it: image folders, Parquet image tables, deletion lists of sample ids."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from orchestrator.datasets import load_dataset
from orchestrator.datasets.mnist5k import load_mnist5k
from orchestrator.forget import ForgetSpec, split_forget
from orchestrator.errors import UserError
from tests.user_files import digits, png, write_imagefolder, write_parquet


def test_imagefolder_reads_classes_in_sorted_order_with_file_path_ids(tmp_path):
    ids = write_imagefolder(tmp_path / "digits", train_per_class=10, test_per_class=4)
    ds = load_dataset(f"imagefolder:{tmp_path / 'digits'}")
    (x, y), _ = digits(train_per_class=10, test_per_class=4)
    assert ds.classes == ("one", "two", "zero") and ds.num_classes == 3
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (12, 1, 28, 28)
    assert sorted(ds.ids_train) == sorted(ids) and ds.ids_train[0] == "train/one/0010.png"
    # The pixels and labels are the images written: digit 1 ("one") is label 0 in sorted order.
    first = ids.index("train/one/0010.png")
    assert torch.equal(ds.x_train[0, 0], torch.from_numpy(x[first])) and ds.y_train[0] == 0
    assert (ds.y_train[[i for i, s in enumerate(ds.ids_train) if "/zero/" in s]] == 2).all()

    resized = load_dataset(f"imagefolder:{tmp_path / 'digits'}", image_size=12)
    assert resized.x_train.shape == (30, 1, 12, 12) and resized.ids_train == ds.ids_train


def test_imagefolder_without_test_folder_is_split_by_seed(tmp_path):
    ids = write_imagefolder(tmp_path / "d", with_test=False, train_per_class=10)
    a = load_dataset(f"imagefolder:{tmp_path / 'd'}")
    assert len(a.ids_train) == 24 and len(a.y_test) == 6
    assert set(a.ids_train) < set(ids) and a.ids_train == load_dataset(f"imagefolder:{tmp_path / 'd'}").ids_train
    assert load_dataset(f"imagefolder:{tmp_path / 'd'}", split_seed=1).ids_train != a.ids_train


def test_parquet_as_hugging_face_writes_it(tmp_path):
    ids = write_parquet(tmp_path / "d.parquet", train_per_class=10, test_per_class=4)
    ds = load_dataset(f"parquet:{tmp_path / 'd.parquet'}")
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (12, 1, 28, 28)
    assert list(ds.ids_train) == ids and ds.num_classes == 3
    (x, y), _ = digits(train_per_class=10, test_per_class=4)
    assert torch.equal(ds.x_train[:, 0], torch.from_numpy(x)) and ds.y_train.tolist() == y.tolist()

    # Other column names by flag; no id column: row indices; a folder of train / test files.
    table = pq.read_table(tmp_path / "d.parquet").rename_columns(["img", "digit", "key", "split"])
    (tmp_path / "hf").mkdir()
    split = np.array(table.column("split").to_pylist())
    pq.write_table(table.filter(pa.array(split == "train")).drop(["key"]), tmp_path / "hf" / "train-00000.parquet")
    pq.write_table(table.filter(pa.array(split == "test")).drop(["key"]), tmp_path / "hf" / "test-00000.parquet")
    hf = load_dataset(f"parquet:{tmp_path / 'hf'}", image_column="img", label_column="digit")
    assert torch.equal(hf.x_train, ds.x_train) and torch.equal(hf.x_test, ds.x_test)
    assert hf.ids_train == tuple(map(str, range(30)))
    with pytest.raises(UserError, match=r"no column 'image' \(--image-column\); columns: img, digit, split"):
        load_dataset(f"parquet:{tmp_path / 'hf'}")


@pytest.mark.parametrize("case, message", [
    ("empty", "no images"),
    ("no_train", "no train folder"),
    ("corrupt", "train/one/bad.png is not a readable image (UnidentifiedImageError)"),
    ("truncated", "train/one/cut.png is not a readable image"),
    ("sizes", "images differ in size"),
    ("too_big", "needs 0.00 GB in memory as uint8 images, more than --max-data-gb 1e-06 allows"),
])
def test_imagefolder_errors(tmp_path, case, message):
    root = tmp_path / "d"
    (root / "train" / "one").mkdir(parents=True)
    if case == "no_train":
        root = tmp_path / "d" / "train"
    if case in ("corrupt", "truncated", "sizes", "too_big"):
        write_imagefolder(root, train_per_class=3, test_per_class=1)
    if case == "corrupt":
        (root / "train" / "one" / "bad.png").write_bytes(b"not an image")
    if case == "truncated":
        noise = np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)
        (root / "train" / "one" / "cut.png").write_bytes(png(noise)[:300])
    if case == "sizes":
        (root / "train" / "one" / "big.png").write_bytes(png(np.zeros((32, 32), np.uint8)))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset(f"imagefolder:{root}", max_gb=1e-6 if case == "too_big" else None)


def test_unreadable_parquet_and_bad_columns(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="not a readable Parquet file"):
        load_dataset(f"parquet:{tmp_path / 'junk.parquet'}")
    pq.write_table(pa.table({"image": [png(np.zeros((4, 4), np.uint8))], "label": ["cat"]}), tmp_path / "s.parquet")
    with pytest.raises(UserError, match="label column 'label' must hold integers, not string"):
        load_dataset(f"parquet:{tmp_path / 's.parquet'}")
    with pytest.raises(UserError, match="file not found"):
        load_dataset(f"parquet:{tmp_path / 'missing.parquet'}")
    image = png(np.zeros((4, 4), np.uint8))
    pq.write_table(pa.table({"image": [image] * 3, "label": [0, 1, 0], "id": ["a", "b", "a"]}), tmp_path / "r.parquet")
    with pytest.raises(UserError, match="id column 'id' repeats ids: a"):
        load_dataset(f"parquet:{tmp_path / 'r.parquet'}")


def test_deletion_lists_select_exactly_the_listed_samples(tmp_path):
    write_imagefolder(tmp_path / "d", train_per_class=10)
    ds = load_dataset(f"imagefolder:{tmp_path / 'd'}")
    chosen = [ds.ids_train[i] for i in (3, 7, 20)]
    (tmp_path / "ids.txt").write_text("\n".join(chosen) + "\n\n")
    (tmp_path / "ids.csv").write_text("id,reason\n" + "".join(f"{i},request\n" for i in chosen))
    pq.write_table(pa.table({"id": chosen}), tmp_path / "ids.parquet")
    for name in ("ids.txt", "ids.csv", "ids.parquet"):
        data = split_forget(ds, ForgetSpec.parse(f"ids:{tmp_path / name}"), seed=0)
        assert sorted(data.forget_idx.tolist()) == [3, 7, 20] and sorted(data.forget_ids()) == sorted(chosen)
        assert len(data.retain_idx) == len(ds.ids_train) - 3
    # The ids (and the digest) do not depend on the run seed.
    again = split_forget(ds, ForgetSpec.parse(f"ids:{tmp_path / 'ids.txt'}"), seed=5)
    assert again.forget_digest() == data.forget_digest()


@pytest.mark.parametrize("content, message", [
    ("", "the list is empty"),
    ("a\nb\na\n", "duplicate ids: a"),
    ("train/one/0005.png\nnope-1\nnope-2\n", "2 id(s) not in the training split: nope-1, nope-2"),
])
def test_bad_deletion_lists(tmp_path, content, message):
    write_imagefolder(tmp_path / "d", train_per_class=5)
    ds = load_dataset(f"imagefolder:{tmp_path / 'd'}")
    (tmp_path / "ids.txt").write_text(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        split_forget(ds, ForgetSpec.parse(f"ids:{tmp_path / 'ids.txt'}"), seed=0)
    with pytest.raises(UserError, match="file not found"):
        ForgetSpec.parse(f"ids:{tmp_path / 'missing.txt'}")


def test_several_forget_classes():
    ds = load_mnist5k()
    data = split_forget(ds, ForgetSpec.parse("class:3,5"), seed=0)
    assert str(data.forget) == "class:3,5" and data.forget.forget_class is None
    assert set(data.y_forget.unique().tolist()) == {3, 5} and not torch.isin(data.y_retain, torch.tensor([3, 5])).any()
    assert not torch.isin(data.test_set()[1], torch.tensor([3, 5])).any()
    assert str(ForgetSpec.parse("class:3")) == "class:3" and ForgetSpec.parse("class:3").forget_class == 3
    with pytest.raises(UserError, match=r"class:3,12: class not in the data: 12;"):
        split_forget(ds, ForgetSpec.parse("class:3,12"), seed=0)
