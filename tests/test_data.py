"""Tests of jaxgen.data: our TFDS builders, the stateless sharded pipeline, transforms, toy sets."""
import collections
import gzip
import io
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath

from jaxgen import data
from jaxgen.data import pipeline
from jaxgen.data import toy
from jaxgen.data.builders import prepare_local_dataset

MNIST_DIR = "/work/shared/data/mnist"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_data_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      dataset="digits", data_dir="", source_dir="", image_size=8, num_channels=1, num_levels=17,
      centered=True, random_flip=False, uniform_dequantization=False, num_classes=0))
  config.update(overrides)
  return config


def example_counter(images, labels):
  """Multiset of (image bytes, label): compares data sets that may hold duplicate images."""
  return collections.Counter((im.tobytes(), int(lb)) for im, lb in zip(images, labels))


def write_idx(path, array):
  """Writes a uint8 array as a gzip idx file (the MNIST format)."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits_config(data_dir):
  prepare_local_dataset("digits", data_dir)
  return make_data_config(data_dir=data_dir)


@pytest.fixture(scope="module")
def digits_test_examples(digits_config):
  import sklearn.datasets

  digits = sklearn.datasets.load_digits()
  return digits.images[1500:].astype(np.uint8)[..., None], digits.target[1500:]


# --- builders ---------------------------------------------------------------------------------


def test_digits_builder_reads_through_data_source(digits_config):
  import sklearn.datasets

  with pytest.raises(tfds.core.registered.DatasetNotFoundError):
    tfds.builder_cls("digits")  # our builders do not register themselves with TFDS
  digits = sklearn.datasets.load_digits()
  for split, expected in (("train", slice(0, 1500)), ("test", slice(1500, None))):
    source = tfds.data_source("digits", split=split, data_dir=digits_config.data_dir)
    records = source.__getitems__(list(range(len(source))))
    images = np.stack([r["image"] for r in records])
    labels = np.array([r["label"] for r in records])
    assert len(source) == (1500 if split == "train" else 297)
    assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 1)
    assert images.min() == 0 and images.max() == 16
    np.testing.assert_array_equal(images[..., 0], digits.images[expected])  # sklearn order kept
    np.testing.assert_array_equal(labels, digits.target[expected])


@pytest.mark.skipif(not os.path.isdir(MNIST_DIR), reason="no local MNIST files")
def test_mnist_local_with_test_files_only(data_dir):
  builder = prepare_local_dataset("mnist_local", data_dir, MNIST_DIR)
  assert sorted(builder.info.splits.keys()) == ["test"]
  source = tfds.data_source("mnist_local", split="test", data_dir=data_dir)
  assert len(source) == 10_000
  records = source.__getitems__(list(range(10_000)))
  images = np.stack([r["image"] for r in records])
  labels = np.array([r["label"] for r in records])
  assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
  assert round(float(images.mean()), 3) == 33.791
  np.testing.assert_array_equal(
      np.bincount(labels, minlength=10), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])

  config = make_data_config(dataset="mnist_local", data_dir=data_dir, source_dir=MNIST_DIR,
                            image_size=28, num_levels=256)
  train = data.get_dataset(config, "test[:9000]", seed=0, process_index=0, process_count=1)
  held_out = data.get_dataset(config, "test[9000:]", seed=0, process_index=0, process_count=1)
  assert (train.num_examples, held_out.num_examples) == (9000, 1000)
  assert train.image_shape == (28, 28, 1)
  first = next(held_out.iterate(4))["image"]
  np.testing.assert_array_equal(first, images[9000:9004])  # file order kept
  with pytest.raises(ValueError, match=r"split 'train'.*available splits: \['test'\]"):
    data.get_dataset(config, "train", seed=0, process_index=0, process_count=1)


def test_mnist_local_with_test_files_only_synthetic(tmp_path):
  """The layout of ../shared/data/mnist (test images and labels, the training labels alone), on
  synthetic files, so that it is tested where the real files are absent: only the complete
  'test' split is built, in file order, sliceable, and 'train' is refused by name."""
  rng = np.random.default_rng(1)
  source_dir = tmp_path / "raw"
  source_dir.mkdir()
  images, labels = rng.integers(0, 256, (20, 28, 28)), rng.integers(0, 10, 20)
  write_idx(source_dir / "t10k-images-idx3-ubyte.gz", images)
  write_idx(source_dir / "t10k-labels-idx1-ubyte.gz", labels)
  write_idx(source_dir / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 7))
  data_dir = str(tmp_path / "tfds")
  builder = prepare_local_dataset("mnist_local", data_dir, str(source_dir))
  assert sorted(builder.info.splits.keys()) == ["test"]
  config = make_data_config(dataset="mnist_local", data_dir=data_dir, source_dir=str(source_dir),
                            image_size=28, num_levels=256)
  held_out = data.get_dataset(config, "test[16:]", seed=0, process_index=0, process_count=1)
  assert held_out.num_examples == 4 and held_out.image_shape == (28, 28, 1)
  np.testing.assert_array_equal(next(held_out.iterate(4))["image"][..., 0], images[16:])
  with pytest.raises(ValueError, match=r"split 'train'.*available splits: \['test'\]"):
    data.get_dataset(config, "train", seed=0, process_index=0, process_count=1)


def test_mnist_local_with_all_four_files(tmp_path):
  rng = np.random.default_rng(0)
  source_dir = tmp_path / "raw"
  source_dir.mkdir()
  arrays = {
      "train": (rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 10, 30)),
      "test": (rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)),
  }
  for prefix, split in (("train", "train"), ("t10k", "test")):
    write_idx(source_dir / f"{prefix}-images-idx3-ubyte.gz", arrays[split][0])
    write_idx(source_dir / f"{prefix}-labels-idx1-ubyte.gz", arrays[split][1])
  data_dir = str(tmp_path / "tfds")
  builder = prepare_local_dataset("mnist_local", data_dir, str(source_dir))
  assert sorted(builder.info.splits.keys()) == ["test", "train"]
  for split, (images, labels) in arrays.items():
    source = tfds.data_source("mnist_local", split=split, data_dir=data_dir)
    records = source.__getitems__(list(range(len(source))))
    np.testing.assert_array_equal(np.stack([r["image"][..., 0] for r in records]), images)
    np.testing.assert_array_equal([r["label"] for r in records], labels)

  # A SHA256SUMS file in the folder is checked.
  (source_dir / "SHA256SUMS").write_text("0" * 64 + "  t10k-images-idx3-ubyte.gz\n")
  with pytest.raises(ValueError, match="checksum mismatch"):
    prepare_local_dataset("mnist_local", str(tmp_path / "tfds2"), str(source_dir))


def test_mnist_local_errors(tmp_path):
  with pytest.raises(ValueError, match="source_dir"):
    prepare_local_dataset("mnist_local", str(tmp_path / "a"), "")
  with pytest.raises(ValueError, match="no complete split"):
    prepare_local_dataset("mnist_local", str(tmp_path / "b"), str(tmp_path))
  # an empty folder: a ValueError naming the field and the files needed (TFDS's own check raised
  # an AssertionError, a traceback in the CLI, and left folders behind in data_dir)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match=r"config.data.source_dir '.*empty' for data set "
                     r"'mnist_local': .*no complete split: it needs t10k-images-idx3-ubyte.gz"):
    prepare_local_dataset("mnist_local", str(tmp_path / "c"), str(empty))
  assert not (tmp_path / "c").exists()
  # a truncated .gz (an interrupted copy): a ValueError naming the file, not a bare EOFError
  write_idx(empty / "t10k-images-idx3-ubyte.gz", np.zeros((50, 28, 28)))
  write_idx(empty / "t10k-labels-idx1-ubyte.gz", np.zeros(50))
  whole = (empty / "t10k-images-idx3-ubyte.gz").read_bytes()
  (empty / "t10k-images-idx3-ubyte.gz").write_bytes(whole[:len(whole) // 2])
  with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz cannot be read \(EOFError"):
    prepare_local_dataset("mnist_local", str(tmp_path / "d"), str(empty))


def test_loading_leaves_no_tfds_temp_folders(tmp_path, monkeypatch):
  # TFDS's builder constructor, for a data set not prepared yet, makes tempfile.mkdtemp("tfds")
  # (DatasetInfo.initialize_from_bucket) and never removes it: each first prepare of digits, and
  # each "not prepared" error, left an empty /tmp/tmp...tfds behind. A temp directory of our own
  # (not the shared /tmp) keeps other processes' folders out of the count.
  private_tmp = tmp_path / "tmp"
  private_tmp.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
  config = make_data_config(data_dir=str(tmp_path / "tfds"))
  dataset = data.get_dataset(config, "train", seed=0, process_index=0, process_count=1)
  assert dataset.get_batch(0, 4)["image"].shape == (4, 8, 8, 1)
  data.get_dataset(config, "test", seed=0, process_index=0, process_count=1)  # prepared: reread
  with pytest.raises(ValueError, match="not prepared"):
    data.get_dataset(make_data_config(dataset="mnist", data_dir=str(tmp_path / "tfds"),
                                      image_size=28, num_levels=256),
                     "train", seed=0, process_index=0, process_count=1)
  assert tempfile.tempdir == str(private_tmp)  # restored
  assert sorted(os.listdir(private_tmp)) == []


def test_tfds_temp_dir_removes_only_its_empty_tfds_folders(tmp_path, monkeypatch):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
  outside = tempfile.mkdtemp("tfds")  # another user's folder, made before: never touched
  with pipeline.tfds_temp_dir() as ours:
    assert tempfile.gettempdir() == ours and os.path.dirname(ours) == str(tmp_path)
    empty = tempfile.mkdtemp("tfds")
    full = tempfile.mkdtemp("tfds")
    with open(os.path.join(full, "dataset_info.json"), "w") as f:
      f.write("{}")
    other = tempfile.mkdtemp()
  assert tempfile.tempdir == str(tmp_path)
  assert os.path.isdir(outside)
  assert not os.path.exists(empty)
  assert os.path.isfile(os.path.join(full, "dataset_info.json"))  # not empty: kept, with ours
  assert os.path.isdir(other)  # not TFDS's: kept
  shutil.rmtree(ours)
  with pytest.raises(RuntimeError):
    with pipeline.tfds_temp_dir() as ours:
      tempfile.mkdtemp("tfds")
      raise RuntimeError("boom")
  assert tempfile.tempdir == str(tmp_path) and not os.path.exists(ours)


# --- pipeline ---------------------------------------------------------------------------------


def test_get_batch_is_a_function_of_seed_and_step(digits_config):
  dataset = data.get_dataset(digits_config, "train", seed=3, process_index=0, process_count=1)
  assert dataset.num_examples == 1500 and dataset.image_shape == (8, 8, 1)
  batch = dataset.get_batch(7, 64)
  assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
  # Same step twice, and after "resuming" in a fresh object: identical batches.
  resumed = data.get_dataset(digits_config, "train", seed=3, process_index=0, process_count=1)
  for step in (7, 30, 0):  # 30 straddles the epoch boundary at 1500 = 23.4 batches
    expected = dataset.get_batch(step, 64)
    for other in (dataset.get_batch(step, 64), resumed.get_batch(step, 64)):
      np.testing.assert_array_equal(other["image"], expected["image"])
      np.testing.assert_array_equal(other["label"], expected["label"])
  assert not np.array_equal(dataset.get_batch(8, 64)["image"], batch["image"])
  other_seed = data.get_dataset(digits_config, "train", seed=4, process_index=0, process_count=1)
  assert not np.array_equal(other_seed.get_batch(7, 64)["image"], batch["image"])
  # Each epoch is a fresh permutation: 15 batches of 100 = one epoch, every index once.
  epoch0 = np.concatenate([dataset.batch_indices(s, 100) for s in range(15)])
  epoch1 = np.concatenate([dataset.batch_indices(s, 100) for s in range(15, 30)])
  np.testing.assert_array_equal(np.sort(epoch0), np.arange(1500))
  np.testing.assert_array_equal(np.sort(epoch1), np.arange(1500))
  assert not np.array_equal(epoch0, epoch1)


@pytest.mark.parametrize("process_count", [2, 3])
def test_host_shards_cover_one_epoch_without_duplicates(digits_config, digits_test_examples,
                                                        process_count):
  images, labels = digits_test_examples
  union = collections.Counter()
  total, batch_size = 0, 16
  for index in range(process_count):
    dataset = data.get_dataset(digits_config, "test", seed=0, process_index=index,
                               process_count=process_count)
    steps = -(-dataset.num_examples // batch_size)
    batches = [dataset.get_batch(s, batch_size) for s in range(steps)]
    epoch_images = np.concatenate([b["image"] for b in batches])[:dataset.num_examples]
    epoch_labels = np.concatenate([b["label"] for b in batches])[:dataset.num_examples]
    union += example_counter(epoch_images, epoch_labels)
    total += dataset.num_examples
  assert total == 297
  assert union == example_counter(images, labels)


@pytest.mark.parametrize("process_count", [1, 2])
def test_iterate_covers_the_split_once_in_order(digits_config, digits_test_examples,
                                                process_count):
  images, labels = digits_test_examples
  seen_images, seen_labels, num_batches = [], [], set()
  for index in range(process_count):
    dataset = data.get_dataset(digits_config, "test", seed=0, process_index=index,
                               process_count=process_count)
    batches = list(dataset.iterate(64))
    num_batches.add(len(batches))
    for batch in batches:
      assert batch["image"].shape == (64, 8, 8, 1) and batch["mask"].dtype == np.bool_
      seen_images.append(batch["image"][batch["mask"]])
      seen_labels.append(batch["label"][batch["mask"]])
  assert len(num_batches) == 1  # hosts stay in lockstep
  np.testing.assert_array_equal(np.concatenate(seen_images), images)
  np.testing.assert_array_equal(np.concatenate(seen_labels), labels)


class FakeImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Six non-square RGB PNG images without labels: stands in for cifar10 / celeb_a."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(__file__)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, disable_shuffling=True,
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(20, 16, 3))}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    from PIL import Image

    for i in range(6):
      buffer = io.BytesIO()
      Image.fromarray(np.full((20, 16, 3), 40 * i, np.uint8)).save(buffer, format="PNG")
      yield i, {"image": buffer.getvalue()}  # PNG bytes: TFDS needs no TensorFlow to store them


def test_tfds_path_decodes_crops_and_resizes(tmp_path):
  with pipeline.tfds_temp_dir():  # TFDS's constructor would leave an empty /tmp/tmp...tfds
    builder = FakeImages(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  config = make_data_config(dataset="fake_images", data_dir=str(tmp_path), image_size=8,
                            num_channels=3, num_levels=256)
  dataset = data.get_dataset(config, "train", seed=0, process_index=0, process_count=1)
  assert dataset.image_shape == (8, 8, 3)
  batch = next(dataset.iterate(4))
  np.testing.assert_array_equal(batch["label"], [-1, -1, -1, -1])
  np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], [0, 40, 80, 120])
  with pytest.raises(ValueError, match="3 channels but config.data.num_channels is 1"):
    data.get_dataset(make_data_config(dataset="fake_images", data_dir=str(tmp_path)), "train",
                     seed=0, process_index=0, process_count=1)
  # pixels 0..200 read with 100 levels would scale to 200 / 99 ~ 2 (centered: 3.04): refused
  config.num_levels = 100
  few_levels = data.get_dataset(config, "train", seed=0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match=r"'fake_images' \('train'\) holds pixel level 200, but "
                     r"config.data.num_levels is 100"):
    few_levels.get_batch(0, 4)
  config.num_levels = 1024
  with pytest.raises(ValueError, match="num_levels is 1024.*at most 256 levels"):
    data.get_dataset(config, "train", seed=0, process_index=0, process_count=1)

  # celeb_a's entry: centre crop 140 of 218 x 178, then resize.
  image = np.zeros((218, 178, 3), np.uint8)
  image[39:179, 19:159] = 255  # exactly the central 140 x 140
  out = pipeline.prepare_image(image, 64, pipeline._SOURCE_SPECS["celeb_a"].crop_size)
  assert out.shape == (64, 64, 3) and out.min() == 255
  # float images would pass through unresized and be truncated by the uint8 batch: refused
  with pytest.raises(ValueError, match="uint8 levels, got dtype float32"):
    pipeline.prepare_image(np.full((8, 8, 1), 3.7, np.float32), 8)


def test_errors(digits_config):
  kwargs = dict(seed=0, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="unknown dataset 'no_such_set'") as info:
    data.get_dataset(make_data_config(dataset="no_such_set",
                                      data_dir=digits_config.data_dir), "train", **kwargs)
  assert "did you mean" not in str(info.value)
  # score_sde's spelling of a TFDS name gets TFDS's. (TFDS itself resolves 'MNIST_local' to our
  # builder once its module is imported, so our names are not used for this check.)
  for wrong, right in (("CIFAR10", "cifar10"), ("cifar_10", "cifar10")):
    with pytest.raises(ValueError, match=rf"unknown dataset '{wrong}'.*did you mean '{right}'\?"):
      data.get_dataset(make_data_config(dataset=wrong, data_dir=digits_config.data_dir), "train",
                       **kwargs)
  with pytest.raises(ValueError, match="unknown dataset 'toy_nope'.*toy_checkerboard"):
    data.get_dataset(make_data_config(dataset="toy_nope"), "train", **kwargs)
  with pytest.raises(ValueError, match=r"split 'valid'.*\['test', 'train'\]"):
    data.get_dataset(digits_config, "valid", **kwargs)
  with pytest.raises(ValueError, match="process_index 2"):
    data.get_dataset(digits_config, "train", seed=0, process_index=2, process_count=2)
  dataset = data.get_dataset(digits_config, "test", **kwargs)
  for bad in (0, -4):
    with pytest.raises(ValueError, match=f"local_batch_size must be a positive int, got {bad}"):
      dataset.get_batch(0, bad)
    with pytest.raises(ValueError, match="local_batch_size"):
      next(dataset.iterate(bad))
  with pytest.raises(ValueError, match="global batch size 100 is not divisible by the number of "
                     "processes 3"):
    data.check_batch_size(100, 8, 3)
  with pytest.raises(ValueError, match="global batch size 12 is not divisible by the number of "
                     "devices 8"):
    data.check_batch_size(12, 8, 2)
  assert data.check_batch_size(128, 8, 2) == 64


def test_num_levels_must_match_the_builders_data(digits_config):
  """digits holds levels 0..16: read with the 8-bit default (num_levels 256) it trained on
  images in [-1, -0.875] (samples nearly black), with no error."""
  kwargs = dict(seed=0, process_index=0, process_count=1)
  eight_bit = make_data_config(data_dir=digits_config.data_dir, num_levels=256)
  with pytest.raises(ValueError, match="data set 'digits' has 17 levels per pixel, but "
                     "config.data.num_levels is 256"):
    data.get_dataset(eight_bit, "train", **kwargs)
  batch = data.get_dataset(digits_config, "train", **kwargs).get_batch(0, 256)["image"]
  assert (batch.min(), batch.max()) == (0, 16)  # with num_levels 17: [-1, 1] exactly
  with pytest.raises(ValueError, match="config.data.num_levels must be an int >= 2, got 1"):
    data.get_dataset(make_data_config(data_dir=digits_config.data_dir, num_levels=1), "train",
                     **kwargs)


def test_default_process_index_and_count(digits_config):
  dataset = data.get_dataset(digits_config, "test", seed=0)
  assert (dataset.process_index, dataset.process_count) == (0, 1)
  assert dataset.num_examples == 297


def test_importing_and_reading_needs_no_tensorflow(tmp_path):
  code = textwrap.dedent(f"""
      import sys
      import jaxgen.data
      assert "tensorflow" not in sys.modules, "import"
      import ml_collections
      config = ml_collections.ConfigDict(dict(dataset="digits", data_dir={str(tmp_path)!r},
                                              source_dir="", image_size=8, num_channels=1))
      dataset = jaxgen.data.get_dataset(config, "train", seed=0)
      assert dataset.get_batch(0, 8)["image"].shape == (8, 8, 8, 1)
      assert "tensorflow" not in sys.modules, "prepare and read"
      """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


# --- transforms -------------------------------------------------------------------------------


def test_preprocess_flip_only_in_training():
  config = make_data_config(num_levels=256, random_flip=True)
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (32, 4, 5, 3)), jnp.uint8)
  expected = np.asarray(images, np.float32) / 255.0 * 2.0 - 1.0
  flipped = expected[:, :, ::-1]
  out = np.asarray(jax.jit(lambda k, x: data.preprocess(k, x, config, True))(
      jax.random.PRNGKey(0), images))
  is_flipped = np.array([np.allclose(o, f, atol=1e-6) for o, f in zip(out, flipped)])
  is_same = np.array([np.allclose(o, e, atol=1e-6) for o, e in zip(out, expected)])
  assert np.all(is_flipped | is_same) and 0 < is_flipped.sum() < 32
  evaluation = data.preprocess(jax.random.PRNGKey(0), images, config, False)
  np.testing.assert_allclose(evaluation, expected, atol=1e-6)


@pytest.mark.parametrize("num_levels", [17, 256])
def test_dequantization_range_and_bins(num_levels):
  config = make_data_config(num_levels=num_levels, uniform_dequantization=True, centered=False)
  levels = jnp.tile(jnp.arange(num_levels, dtype=jnp.uint8), 64).reshape(-1, 1, 1, 1)
  x = np.asarray(jax.jit(lambda k, v: data.preprocess(k, v, config, False))(
      jax.random.PRNGKey(1), levels))
  assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() < 1.0
  np.testing.assert_array_equal(np.floor(x * num_levels), np.asarray(levels))  # the bin of k
  centered = data.preprocess(jax.random.PRNGKey(1), levels,
                             make_data_config(num_levels=num_levels, uniform_dequantization=True),
                             False)
  np.testing.assert_allclose(centered, 2.0 * x - 1.0, atol=1e-6)
  direct = data.transforms.uniform_dequantize(jax.random.PRNGKey(1), levels, num_levels)
  assert float(direct.min()) >= 0.0 and float(direct.max()) < 1.0
  with pytest.raises(ValueError, match="needs a PRNG key"):
    data.preprocess(None, levels, config, False)


def test_dequantized_values_stay_inside_their_bins_at_float32_edges(monkeypatch):
  """In float32, 255 + u rounds to 256 for u > 1 - 2**-17: with the real draws, 3 of 2**20
  values of level 255 came out as exactly 1.0 (the next bin; centered: 1.0), about 5 per million
  of every level >= 128. Now every value lies in [k / K, (k + 1) / K), also at the extreme draws
  u = 0 and u = 1 - 2**-23 and for K not a power of two (rounded division)."""
  key = jax.random.PRNGKey(0)
  levels = jnp.full((2**20,), 255, jnp.uint8)
  naive = (255.0 + np.asarray(jax.random.uniform(key, levels.shape, jnp.float32))) / 256.0
  assert (naive >= 1.0).sum() > 0  # the draws that used to leave the bin
  x = np.asarray(jax.jit(data.transforms.uniform_dequantize, static_argnums=2)(key, levels, 256))
  assert x.max() < 1.0
  np.testing.assert_array_equal(x[naive < 1.0], naive[naive < 1.0])  # the others are unchanged

  # the extreme draws, every level, under jit: u (3, 1) is traced in for the patched draw
  extremes = jnp.array([[0.0], [1.0 - 2.0**-23], [np.nextafter(np.float32(1), np.float32(0))]],
                       jnp.float32)
  for num_levels in (17, 255, 256):
    def dequantize(u, levels, num_levels=num_levels):
      monkeypatch.setattr(data.transforms.parallel, "global_batch_draw",
                          lambda draw, key, shape: jnp.broadcast_to(u, shape))
      return data.transforms.uniform_dequantize(key, levels, num_levels)
    k = np.arange(num_levels, dtype=np.float64)
    x = np.asarray(jax.jit(dequantize)(extremes, jnp.tile(jnp.asarray(k, jnp.float32), (3, 1))),
                   np.float64)
    assert np.all(k / num_levels <= x) and np.all(x < (k + 1) / num_levels), num_levels
  monkeypatch.setattr(data.transforms.parallel, "global_batch_draw",
                      lambda draw, key, shape: jnp.full(shape, 1.0 - 2.0**-23, jnp.float32))
  centered = make_data_config(num_levels=256, uniform_dequantization=True)
  top = data.preprocess(key, jnp.full((1, 1, 1, 1), 255, jnp.uint8), centered, False)
  assert float(top.max()) < 1.0


def test_scaling_and_postprocess_round_trip():
  images = jnp.arange(256, dtype=jnp.uint8).reshape(4, 8, 8, 1)
  for centered in (True, False):
    config = make_data_config(num_levels=256, centered=centered)
    x = data.preprocess(None, images, config, train=True)
    low, high = (-1.0, 1.0) if centered else (0.0, 1.0)
    assert float(x.min()) == low and float(x.max()) == high
    np.testing.assert_array_equal(data.postprocess(x, config), images)
  digits = make_data_config(num_levels=17)
  x = data.preprocess(None, jnp.array([[0, 16]], jnp.uint8), digits, train=False)
  np.testing.assert_allclose(x, [[-1.0, 1.0]])
  np.testing.assert_array_equal(data.postprocess(x, digits), [[0, 255]])


# --- toy data ---------------------------------------------------------------------------------

# (largest |coordinate| allowed, expected mean distance from the origin) at FFJORD's scalings.
TOY_SCALES = {
    "checkerboard": (4.0, None),
    "8gaussians": (5.5, 4.0 / 1.414),
    "moons": (4.0, None),
    "2spirals": (4.5, None),
    "pinwheel": (6.0, None),
    "rings": (3.6, (3.0 + 2.25 + 1.5 + 0.75) / 4),
    "circles": (4.5, (3.0 + 1.5) / 2),
    "swissroll": (3.6, None),
}


@pytest.mark.parametrize("name", toy.TOY_DATASETS)
def test_toy_sets_are_finite_and_at_ffjord_scale(name):
  samples = np.asarray(data.sample_toy(name, jax.random.PRNGKey(0), 4096))
  assert samples.shape == (4096, 2) and samples.dtype == np.float32
  assert np.all(np.isfinite(samples))
  max_abs, mean_radius = TOY_SCALES[name]
  assert np.abs(samples).max() <= max_abs
  assert samples.std(axis=0).min() > 0.5  # spread over the plane, not collapsed
  if mean_radius is not None:
    assert abs(np.linalg.norm(samples, axis=1).mean() - mean_radius) < 0.05 * mean_radius
  np.testing.assert_array_equal(data.sample_toy(name, 0, 16), data.sample_toy(name, 0, 16))


def test_toy_sets_match_scikit_learn_moments():
  import sklearn.datasets

  rng = np.random.RandomState(0)
  references = {
      "moons": sklearn.datasets.make_moons(20000, noise=0.1, random_state=rng)[0] * 2
               + np.array([-1.0, -0.2]),
      "circles": sklearn.datasets.make_circles(20000, factor=0.5, noise=0.08,
                                               random_state=rng)[0] * 3,
      "swissroll": sklearn.datasets.make_swiss_roll(20000, noise=1.0,
                                                    random_state=rng)[0][:, [0, 2]] / 5,
  }
  for name, reference in references.items():
    samples = np.asarray(data.sample_toy(name, 1, 20000))
    np.testing.assert_allclose(samples.mean(0), reference.mean(0), atol=0.05, err_msg=name)
    np.testing.assert_allclose(samples.std(0), reference.std(0), rtol=0.05, err_msg=name)


def test_toy_dataset_pipeline():
  config = make_data_config(dataset="toy_checkerboard")
  with pytest.raises(ValueError, match="unknown toy data set 'nope'.*checkerboard, 8gaussians"):
    data.sample_toy("nope", 0, 4)
  hosts = [data.get_dataset(config, "train", seed=5, process_index=i, process_count=2)
           for i in range(2)]
  assert hosts[0].image_shape == (2,)
  batch = hosts[0].get_batch(3, 32)
  assert batch["image"].shape == (32, 2) and batch["image"].dtype == np.float32
  np.testing.assert_array_equal(batch["image"], hosts[0].get_batch(3, 32)["image"])
  assert not np.array_equal(batch["image"], hosts[0].get_batch(4, 32)["image"])
  assert not np.array_equal(batch["image"], hosts[1].get_batch(3, 32)["image"])
  # the global batch and the evaluation set do not depend on the number of processes
  one = data.get_dataset(config, "train", seed=5, process_index=0, process_count=1)
  np.testing.assert_array_equal(
      np.concatenate([h.get_batch(3, 32)["image"] for h in hosts]), one.get_batch(3, 64)["image"])
  one_test = data.get_dataset(config, "test", seed=5, process_index=0, process_count=1)
  shards = [data.get_dataset(config, "test", seed=5, process_index=i, process_count=3)
            for i in range(3)]
  # the same global evaluation batches: batch k of one process = batch k of the 3 hosts
  for k, (*parts, whole) in enumerate(zip(*[d.iterate(1000) for d in shards],
                                          one_test.iterate(3000))):
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
    np.testing.assert_array_equal(np.concatenate([p["mask"] for p in parts]), whole["mask"])
  assert k + 1 == one_test.num_eval_batches(3000) == shards[0].num_eval_batches(1000) == 4
  assert sum(d.num_host_examples(1000) for d in shards) == 10_000
  test = data.get_dataset(config, "test", seed=5, process_index=0, process_count=2)
  assert not np.array_equal(batch["image"], test.get_batch(3, 32)["image"])
  batches = list(test.iterate(3000))  # global batches of 6,000: host 0 gets 3,000 + 3,000
  assert sum(int(b["mask"].sum()) for b in batches) == test.num_host_examples(3000) == 6000
  assert len(batches) == test.num_eval_batches(3000) == 2
  with pytest.raises(ValueError, match="split 'val'"):
    data.get_dataset(config, "val", seed=0, process_index=0, process_count=1)


def test_synthetic_gmm_moments_density_and_pipeline():
  """`toy_gmm<D>`: samples have the mixture's exact mean and covariance; the exact log-density
  integrates to 1 (D = 1, fine grid) and its sample mean equals the mixture's entropy estimate
  from an independent sample; the pipeline serves D-vectors and checks `data.dim`."""
  weights, means, chols = toy.gmm_parameters(6)
  assert weights.shape == (8,) and means.shape == (8, 6) and chols.shape == (8, 6, 6)
  covs = np.einsum("kij,klj->kil", chols, chols)
  assert np.abs(covs[0] - np.diag(np.diag(covs[0]))).max() > 1e-3  # full covariances
  mean = weights @ means
  second = np.einsum("k,kij->ij", weights, covs + np.einsum("ki,kj->kij", means, means))
  cov = second - np.outer(mean, mean)
  x = np.asarray(data.sample_toy("gmm6", 0, 200_000), np.float64)
  assert x.shape == (200_000, 6)
  se = np.sqrt(np.diag(cov) / len(x))
  assert np.all(np.abs(x.mean(0) - mean) < 5 * se), (x.mean(0), mean)
  np.testing.assert_allclose(np.cov(x.T), cov, atol=0.03 * np.abs(cov).max())

  grid = np.linspace(-15, 15, 60001)[:, None]
  mass = np.exp(toy.gmm_log_prob(grid, 1)).sum() * (grid[1, 0] - grid[0, 0])
  assert abs(mass - 1.0) < 1e-6, mass

  config = make_data_config(dataset="toy_gmm63", dim=63)
  ds = data.get_dataset(config, "train", seed=0, process_index=0, process_count=1)
  assert ds.image_shape == (63,) and ds.get_batch(0, 16)["image"].shape == (16, 63)
  with pytest.raises(ValueError, match="data.dim = 5 does not match dataset 'toy_gmm63'"):
    data.get_dataset(make_data_config(dataset="toy_gmm63", dim=5), "train", seed=0,
                     process_index=0, process_count=1)
  with pytest.raises(ValueError, match="gmm0"):
    data.sample_toy("gmm0", 0, 4)


def test_epoch_order_keeps_non_negative_seeds_and_separates_negative_ones():
  """Seeds >= 0 keep the order they always had; a negative seed no longer shares it with
  ``seed + 2**63`` (the old ``seed % 2**63``)."""
  from jaxgen.data.pipeline import EpochOrder

  class Order(EpochOrder):
    def __init__(self, seed):
      self.seed, self.num_examples = seed, 1000

  for seed in (0, 7, 2**40):
    expected = np.random.default_rng([EpochOrder.seed_salt, seed % 2**63, 3]).permutation(1000)
    np.testing.assert_array_equal(Order(seed)._permutation(3), expected)
  assert not np.array_equal(Order(-1)._permutation(0), Order(2**63 - 1)._permutation(0))
  assert not np.array_equal(Order(-1)._permutation(0), Order(1)._permutation(0))
