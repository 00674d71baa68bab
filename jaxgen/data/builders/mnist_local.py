"""TFDS builder `mnist_local`: MNIST from the original idx files in a local folder.

The folder (TFDS's manual_dir; `config.data.source_dir`) holds the four files users have:
`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`, `t10k-images-idx3-ubyte.gz`,
`t10k-labels-idx1-ubyte.gz` (or the same names without `.gz`). A split is built for each pair of
image and label files present: `train` (60,000) and `test` (10,000), or only `test` when the
training images are missing. Examples keep the file order (`test[:9000]` is the first 9,000 test
images). When the folder has a `SHA256SUMS` file (sha256sum format), the files it lists are checked.
Images are stored raw as uint8 `(28, 28, 1)` tensors (PNG encoding in TFDS needs TensorFlow).
"""
import gzip
import hashlib
import os
import zlib

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
  """Reads an idx file (optionally gzip-compressed) into an array of its stored shape."""
  opener = gzip.open if str(path).endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a truncated or damaged download
    raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}): the file is truncated or "
                     f"damaged; copy it again") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise ValueError(f"{path} is not an idx file (magic bytes {data[:4]!r})")
  ndim = data[3]
  shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  offset = 4 + 4 * ndim
  count = int(np.prod(shape))
  if len(data) - offset != count * dtype.itemsize:
    raise ValueError(f"{path}: header says shape {shape} ({count * dtype.itemsize} bytes of data) "
                     f"but the file holds {len(data) - offset} bytes of data")
  return np.frombuffer(data, dtype, count=count, offset=offset).reshape(shape)


def _find(folder, stem):
  for name in (stem + ".gz", stem):
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  return None


def available_splits(folder):
  """Maps each split whose image and label files are both in `folder` to (images, labels) paths.

  Raises:
    ValueError: `folder` is missing, a split has only one of its two files, or no split is
      complete.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise ValueError(f"MNIST source folder {folder!r} does not exist")
  found = {}
  for split, (image_stem, label_stem) in SPLIT_FILES.items():
    images, labels = _find(folder, image_stem), _find(folder, label_stem)
    if images and labels:
      found[split] = (images, labels)
    elif images:
      raise ValueError(f"MNIST folder {folder!r} has {os.path.basename(images)} but no "
                       f"{label_stem}.gz for the {split} split")
    # Labels without images (e.g. train labels only) are simply not a split.
  if not found:
    raise ValueError(f"MNIST folder {folder!r} holds no complete split: it needs "
                     f"{SPLIT_FILES['test'][0]}.gz and {SPLIT_FILES['test'][1]}.gz (test) and/or "
                     f"{SPLIT_FILES['train'][0]}.gz and {SPLIT_FILES['train'][1]}.gz (train)")
  return found


def verify_checksums(folder, paths):
  """Checks `paths` against `folder/SHA256SUMS` when that file exists; unlisted files pass."""
  sums_path = os.path.join(os.fspath(folder), "SHA256SUMS")
  if not os.path.isfile(sums_path):
    return
  expected = {}
  with open(sums_path) as f:
    for line in f:
      parts = line.split()
      if len(parts) == 2:
        expected[parts[1].lstrip("*")] = parts[0].lower()
  for path in paths:
    name = os.path.basename(path)
    if name not in expected:
      continue
    with open(path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
    if digest != expected[name]:
      raise ValueError(f"checksum mismatch for {path}: sha256 {digest}, SHA256SUMS says "
                       f"{expected[name]}")


def load_split(images_path, labels_path):
  """Reads and checks one split: images (n, 28, 28, 1) uint8, labels (n,) int64 in 0..9."""
  images = read_idx(images_path)
  labels = read_idx(labels_path)
  if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
    raise ValueError(f"{images_path}: expected uint8 images of shape (n, 28, 28), got "
                     f"{images.dtype} {images.shape}")
  if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
    raise ValueError(f"{labels_path}: expected {images.shape[0]} labels, got shape {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise ValueError(f"{labels_path}: labels must lie in 0..9, got values in "
                     f"[{labels.min()}, {labels.max()}]")
  return images[..., None], labels.astype(np.int64)


class MnistLocal(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """MNIST read from the original idx files in a local folder (manual_dir)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version: raw uint8 images, splits from the files present."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the original MNIST idx files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
      "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in one folder and pass it as the "
      "manual_dir (config.data.source_dir). With only the t10k files, only `test` is built.")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS's own lookup needs the `importlib_resources` backport for builders inside packages.
    return epath.Path(__file__)

  @staticmethod
  def check_source_dir(folder):
    """ValueError unless `folder` holds at least one complete split (see `available_splits`)."""
    available_splits(folder)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "MNIST handwritten digits read from local idx files; splits train (60,000) and test "
            "(10,000), or only test when the training files are absent. File order is kept."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
        homepage="http://yann.lecun.com/exdb/mnist/",
        citation=("@article{lecun2010mnist, title={MNIST handwritten digit database}, "
                  "author={LeCun, Yann and Cortes, Corinna and Burges, CJ}, year={2010}}"),
    )

  def _split_generators(self, dl_manager):
    folder = dl_manager.manual_dir
    splits = available_splits(folder)
    verify_checksums(folder, [path for pair in splits.values() for path in pair])
    return {split: self._generate_examples(*paths) for split, paths in splits.items()}

  def _generate_examples(self, images_path, labels_path):
    images, labels = load_split(images_path, labels_path)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}
