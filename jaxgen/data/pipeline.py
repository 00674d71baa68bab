"""Host-side input pipeline: random-access TFDS data sources, sharded over hosts, stateless.

Which source serves a data set is decided by `config.data.dataset`:
- `toy_<name>`: the 2-D samplers of `jaxgen.data.toy`, and `toy_gmm<D>`, a fixed synthetic
  D-dimensional Gaussian mixture (tabular-sized CNF runs) (infinite data);
- `digits`, `mnist_local`: our builders, prepared into `data_dir` on first use, then read like
  any other TFDS data set;
- anything else (cifar10, mnist, celeb_a, downsampled_imagenet/32x32, ...): a TFDS data set that
  must already be prepared in `data_dir` in the array_record format
  (`tfds build NAME --file_format=array_record`), read through `tfds.data_source`.

Every TFDS data set goes through the same code: `tfds.data_source(name, split, data_dir)`, host
`i` of `n` takes the contiguous block `[N i / n, N (i + 1) / n)` of the split, and a small table
says how to crop / resize. Training batches are a pure function of `(seed, step)`: the shard is
read as an endless sequence of epochs, epoch `e` in the order of a permutation drawn from
`(seed, e)`, and batch `step` holds positions `[step b, (step + 1) b)` of that sequence. Resuming
is therefore just calling `get_batch` with the restored step (keep the batch size). Nothing in
this module imports TensorFlow.
"""
import collections
import contextlib
import dataclasses
import fnmatch
import os
import re
import tempfile
import threading
import zlib

import jax
import numpy as np
from jaxgen._checks import check_int
from jaxgen.data import toy
from jaxgen.likelihood import check_num_levels

# TFDS and our builders are imported on first use (``_tfds()``), so that importing jaxgen (and
# toy-data or random-data runs) does not pay TFDS's import time or need it installed.
LOCAL_BUILDERS = ("digits", "mnist_local")


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds


# TFDS's DatasetBuilder constructor, for a data set not yet prepared in data_dir, calls
# `DatasetInfo.initialize_from_bucket`, which makes `tempfile.mkdtemp("tfds")` (a `tmp...tfds`
# folder in the temp directory) before looking for metadata on GCS and never removes it: with GCS
# off (TFDS 4.9) every such construction left one empty folder behind.
_TFDS_TEMP_PATTERN = "tmp*tfds"
_tfds_temp_lock = threading.RLock()


@contextlib.contextmanager
def tfds_temp_dir():
  """Runs TFDS builder construction with a temp directory of our own, removed afterwards.

  For the duration, `tempfile.tempdir` points to a fresh folder made in the usual temp directory;
  on exit the old value is restored, the empty `tmp*tfds` folders TFDS made in ours are removed,
  and ours is removed when it is then empty. Nothing outside our folder is touched, and nothing
  that is not empty is removed. Keep the block short (builder construction only): other threads
  of this process that make temp files meanwhile make them in our folder (then left in place).
  """
  with _tfds_temp_lock:
    saved = tempfile.tempdir  # restored as it was (None: the default, from $TMPDIR etc.)
    ours = tempfile.mkdtemp(prefix="jaxgen-tfds-")
    tempfile.tempdir = ours
    try:
      yield ours
    finally:
      if tempfile.tempdir == ours:
        tempfile.tempdir = saved
      try:
        names = os.listdir(ours)
      except OSError:
        names = []
      for entry in fnmatch.filter(names, _TFDS_TEMP_PATTERN):
        try:
          os.rmdir(os.path.join(ours, entry))  # only when empty
        except OSError:
          pass
      try:
        os.rmdir(ours)
      except OSError:
        pass


def prepare_local_dataset(*args, **kwargs):
  """Builds one of `LOCAL_BUILDERS` into a TFDS data directory (`jaxgen.data.builders`)."""
  from jaxgen.data import builders  # pylint: disable=import-outside-toplevel
  return builders.prepare_local_dataset(*args, **kwargs)

# Levels per pixel of our own builders' data (other TFDS image data sets are 8-bit: at most 256);
# `config.data.num_levels` must agree, since the scaling to [-1, 1] / [0, 1] is computed from it.
DATASET_LEVELS = {"digits": 17, "mnist_local": 256}
UINT8_LEVELS = 256

# Shards up to this size (after cropping / resizing) are read into memory once.
CACHE_LIMIT_BYTES = 512 * 2**20
# Size of the fixed evaluation set that `iterate` walks over for toy data (over all hosts).
TOY_EVAL_EXAMPLES = 10_000
_TOY_SPLITS = ("train", "validation", "test")
_SEED_SALT = 0x6A61786765  # "jaxge": keeps our permutation streams apart from other uses of a seed


@dataclasses.dataclass(frozen=True)
class _SourceSpec:
  """How to read one TFDS data set: feature keys and a center crop before resizing."""

  image_key: str = "image"
  label_key: str = "label"
  crop_size: int = 0  # center crop to crop_size x crop_size before resizing (0: none)


# Data sets whose reading differs from the default: read "image" and "label" (a missing label
# feature gives labels -1, as for downsampled_imagenet), center crop to a square if needed, resize
# when the side differs from `image_size` (cifar10, mnist, digits, downsampled_imagenet need none).
_SOURCE_SPECS = {
    "celeb_a": _SourceSpec(crop_size=140),  # score_sde: central crop 140, then resize
}


def check_batch_size(global_batch, num_devices, num_processes):
  """Checks that a global batch splits evenly; returns the per-process (local) batch size.

  Args:
    global_batch: batch size summed over all devices of all hosts.
    num_devices: number of devices over all hosts (`jax.device_count()`).
    num_processes: number of hosts (`jax.process_count()`).
  """
  if num_processes <= 0 or num_devices <= 0:
    raise ValueError(f"need at least one process and one device, got num_processes="
                     f"{num_processes}, num_devices={num_devices}")
  global_batch = check_int(global_batch, "global batch size")
  if global_batch % num_processes:
    raise ValueError(f"global batch size {global_batch} is not divisible by the number of "
                     f"processes {num_processes}")
  if global_batch % num_devices:
    raise ValueError(f"global batch size {global_batch} is not divisible by the number of "
                     f"devices {num_devices}")
  return global_batch // num_processes


def _config_value(data_config, name, default):
  value = getattr(data_config, name, default)
  return default if value is None else value


def _resolve_data_dir(data_dir):
  if data_dir:
    return os.path.expanduser(os.fspath(data_dir))
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def _shard_bounds(num_examples, process_index, process_count):
  start = num_examples * process_index // process_count
  end = num_examples * (process_index + 1) // process_count
  return start, end


def _split_names(split):
  """Base split names of a TFDS split spec, e.g. 'test[:9000]+train' -> ['test', 'train']."""
  return [re.split(r"[\[(]", part, maxsplit=1)[0].strip() for part in str(split).split("+")]


def _center_crop(image, size):
  height, width = image.shape[:2]
  if size > height or size > width:
    raise ValueError(f"cannot center crop {size}x{size} out of an image of shape {image.shape}")
  top, left = (height - size) // 2, (width - size) // 2
  return image[top:top + size, left:left + size]


def _resize(image, size):
  """Antialiased bilinear resize of a (H, W, C) uint8 image to (size, size, C)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  channels = image.shape[-1]
  mode_image = image[..., 0] if channels == 1 else image
  resized = np.asarray(Image.fromarray(mode_image).resize((size, size), Image.BILINEAR))
  return resized.reshape(size, size, channels)


def prepare_image(image, image_size, crop_size=0):
  """One raw image to a square uint8 `(image_size, image_size, C)` image.

  Center crops to `crop_size` (if > 0), then to a centered square if the image is not square,
  then resizes (antialiased bilinear) when the side differs from `image_size`.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8:  # the pipeline's levels, dequantization and bits/dim assume 8 bits
    raise ValueError(f"images must be uint8 levels, got dtype {image.dtype}")
  if image.ndim == 2:
    image = image[..., None]
  if crop_size:
    image = _center_crop(image, crop_size)
  if image.shape[0] != image.shape[1]:
    image = _center_crop(image, min(image.shape[:2]))
  if image.shape[0] != image_size:
    image = _resize(image, image_size)
  return image


class EpochOrder:
  """The training order of a finite shard, shared by every finite data set here.

  The shard is read as endless epochs; epoch ``e`` follows a permutation drawn from
  ``(seed_salt, seed, e)``, and batch ``step`` holds positions ``[step b, (step + 1) b)`` of that
  sequence, so a batch is a pure function of ``(seed, step, b, shard)`` and resuming is exact.
  Subclasses set ``seed``, ``num_examples`` and may override ``seed_salt``.
  """
  seed_salt = _SEED_SALT

  def _permutation(self, epoch):
    cache = self.__dict__.setdefault("_permutations", collections.OrderedDict())
    if epoch not in cache:
      # non-negative seeds as they are; a negative one gets its own (longer) entropy list, so no
      # two seeds share an order (seed % 2**63 made -1 and 2**63 - 1 collide)
      seed = [self.seed] if self.seed >= 0 else [1, -self.seed]
      rng = np.random.default_rng([self.seed_salt, *seed, epoch])
      cache[epoch] = rng.permutation(self.num_examples)
      while len(cache) > 2:  # the current epoch and the one a batch may straddle
        cache.popitem(last=False)
    return cache[epoch]

  def batch_indices(self, step, local_batch_size):
    """Shard-local indices of training batch `step`: (local_batch_size,) int64."""
    step = check_int(step, "step", minimum=0)
    local_batch_size = check_int(local_batch_size, "local_batch_size")
    positions = step * local_batch_size + np.arange(local_batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self.num_examples)
    indices = np.empty(local_batch_size, np.int64)
    for epoch in np.unique(epochs):
      where = epochs == epoch
      indices[where] = self._permutation(int(epoch))[offsets[where]]
    return indices


class TfdsDataset(EpochOrder):
  """One host's shard of a split of a TFDS data set (see the module docstring).

  Attributes:
    name, split: the data set and split spec.
    num_examples: number of examples in this host's shard.
    num_examples_total: number of examples in the split over all hosts.
    image_shape: (H, W, C) of the images `get_batch` returns.
  """

  def __init__(self, source, *, name, split, image_size, num_channels, spec, seed,
               process_index, process_count, num_levels=None):
    self.name = name
    self.num_levels = None if num_levels is None else int(num_levels)
    self.split = split
    self.seed = int(seed)
    self.process_index = process_index
    self.process_count = process_count
    self._source = source
    self._spec = spec
    self.num_examples_total = len(source)
    self._start, self._end = _shard_bounds(self.num_examples_total, process_index, process_count)
    self.num_examples = self._end - self._start
    if self.num_examples <= 0:
      raise ValueError(f"split {split!r} of {name!r} has {self.num_examples_total} examples, too "
                       f"few to give one to each of {process_count} processes")
    self._image_size = image_size
    first = self._read_source([self._start])
    if first["image"].shape[-1] != num_channels:
      raise ValueError(f"data set {name!r} has {first['image'].shape[-1]} channels but "
                       f"config.data.num_channels is {num_channels}")
    self.image_shape = tuple(first["image"].shape[1:])
    self._cache = None
    bytes_per_example = first["image"].nbytes + 4
    self._use_cache = self.num_examples * bytes_per_example <= CACHE_LIMIT_BYTES

  def _read_source(self, indices):
    records = self._source.__getitems__([int(i) for i in indices])
    images = [prepare_image(r[self._spec.image_key], self._image_size, self._spec.crop_size)
              for r in records]
    if self._spec.label_key in records[0]:
      labels = [int(r[self._spec.label_key]) for r in records]
    else:
      labels = [-1] * len(records)
    images = np.stack(images)
    if self.num_levels is not None and images.size and images.max() >= self.num_levels:
      # (cached shards are checked once, when they are read; others on every read)
      raise ValueError(f"data set {self.name!r} ({self.split!r}) holds pixel level "
                       f"{int(images.max())}, but config.data.num_levels is {self.num_levels} "
                       f"(levels 0..{self.num_levels - 1}): set it to the data's number of levels "
                       f"({UINT8_LEVELS} for 8-bit images)")
    return {"image": images, "label": np.asarray(labels, np.int32)}

  def _load_cache(self):
    chunks = [self._read_source(range(lo, min(lo + 1024, self._end)))
              for lo in range(self._start, self._end, 1024)]
    self._cache = {key: np.concatenate([c[key] for c in chunks]) for key in ("image", "label")}

  def _read(self, local_indices):
    """Examples at shard-local indices, in the given order."""
    local_indices = np.asarray(local_indices, np.int64)
    if self._use_cache:
      if self._cache is None:
        self._load_cache()
      return {key: value[local_indices] for key, value in self._cache.items()}
    return self._read_source(local_indices + self._start)

  def get_batch(self, step, local_batch_size):
    """Training batch `step` of this host: a pure function of (seed, step, batch size, shard).

    Returns:
      dict(image=uint8 (b, H, W, C) integer levels, label=int32 (b,), -1 where the data set has
      no labels).
    """
    return self._read(self.batch_indices(step, local_batch_size))

  def num_eval_batches(self, local_batch_size):
    """Batches that `iterate` yields; the same on every host (sized by the largest shard)."""
    local_batch_size = check_int(local_batch_size, "local_batch_size")
    largest_shard = -(-self.num_examples_total // self.process_count)
    return -(-largest_shard // local_batch_size)

  def iterate(self, local_batch_size):
    """One ordered pass over this host's shard, in padded batches of `local_batch_size`.

    Every host yields `num_eval_batches(local_batch_size)` batches, so multi-host evaluation
    steps stay in lockstep; padding rows are zeros with `mask` False.

    Yields:
      dict(image=(b, H, W, C) uint8, label=(b,) int32, mask=(b,) bool).
    """
    local_batch_size = check_int(local_batch_size, "local_batch_size")
    for batch in range(self.num_eval_batches(local_batch_size)):
      lo = min(batch * local_batch_size, self.num_examples)
      hi = min(lo + local_batch_size, self.num_examples)
      yield _pad_batch(self._read(np.arange(lo, hi)) if hi > lo else None, hi - lo,
                       local_batch_size, self.image_shape, np.uint8)


def _pad_batch(batch, num_valid, batch_size, example_shape, dtype):
  images = np.zeros((batch_size,) + tuple(example_shape), dtype)
  labels = np.full((batch_size,), -1, np.int32)
  if num_valid:
    images[:num_valid] = batch["image"]
    labels[:num_valid] = batch["label"]
  mask = np.arange(batch_size) < num_valid
  return {"image": images, "label": labels, "mask": mask}


class ToyDataset:
  """A toy distribution (2-D, or `gmm<D>`): `get_batch` draws fresh samples, `iterate` walks a fixed set.

  Attributes:
    name, split: the data set (`toy_<name>`) and split.
    num_examples_total: `TOY_EVAL_EXAMPLES`, the fixed evaluation set that `iterate` walks over
      all hosts (`get_batch` never repeats); `num_host_examples(b)` is this host's share.
    image_shape: (2,), or (D,) for `gmm<D>`.

  Every global batch is drawn once and split by host (host ``i`` of ``n`` holds rows
  ``[i b, (i + 1) b)`` of ``n b``), for training and for evaluation, so a run sees the same
  global batches whatever the number of processes.
  """

  def __init__(self, toy_name, *, name, split, seed, process_index, process_count):
    self.name = name
    self.split = split
    self.seed = int(seed)
    self.process_index = process_index
    self.process_count = process_count
    self.image_shape = (toy.toy_dim(toy_name),)
    self._toy_name = toy_name
    self.num_examples_total = TOY_EVAL_EXAMPLES
    # Independent streams per split; 2**31 keeps the folded-in value inside int32.
    self._split_key = jax.random.fold_in(jax.random.PRNGKey(self.seed),
                                         zlib.crc32(split.encode()) % 2**31)
    self._eval_points = None

  def get_batch(self, step, local_batch_size):
    """This host's rows of the global batch of step ``step``: fresh samples drawn from a key of
    (seed, split, step) for all ``process_count`` hosts, so the global batch does not depend on
    the number of processes (host ``i`` takes rows ``[i b, (i + 1) b)``).

    Returns:
      dict(image=float32 (b, 2), label=int32 (b,) of -1).
    """
    step = check_int(step, "step", minimum=0)
    local_batch_size = check_int(local_batch_size, "local_batch_size")
    # (the trailing fold_in of 0 keeps the stream that one-process runs always had)
    key = jax.random.fold_in(jax.random.fold_in(self._split_key, step), 0)
    points = np.asarray(toy.sample_toy(self._toy_name, key,
                                       local_batch_size * self.process_count))
    rows = slice(self.process_index * local_batch_size,
                 (self.process_index + 1) * local_batch_size)
    return {"image": points[rows], "label": np.full((local_batch_size,), -1, np.int32)}

  def num_eval_batches(self, local_batch_size):
    """Batches that `iterate` yields; the same on every host."""
    local_batch_size = check_int(local_batch_size, "local_batch_size")
    return -(-TOY_EVAL_EXAMPLES // (local_batch_size * self.process_count))

  def _host_rows(self, batch, local_batch_size):
    """``(lo, hi)``: this host's rows of global evaluation batch ``batch`` in the fixed set."""
    lo = batch * local_batch_size * self.process_count + self.process_index * local_batch_size
    lo = min(lo, TOY_EVAL_EXAMPLES)
    return lo, min(lo + local_batch_size, TOY_EVAL_EXAMPLES)

  def num_host_examples(self, local_batch_size):
    """Points of the fixed set that this host yields in one `iterate` pass (unpadded rows)."""
    return sum(hi - lo for lo, hi in (self._host_rows(b, local_batch_size)
                                      for b in range(self.num_eval_batches(local_batch_size))))

  def iterate(self, local_batch_size):
    """One pass over the fixed evaluation set: this host's rows of each global batch, padded
    with `mask` (global batch ``k`` holds points ``[k n b, (k + 1) n b)`` for ``n`` hosts).

    Yields:
      dict(image=float32 (b, 2), label=int32 (b,), mask=bool (b,)).
    """
    local_batch_size = check_int(local_batch_size, "local_batch_size")
    if self._eval_points is None:  # one fixed set, whatever the number of hosts
      key = jax.random.fold_in(jax.random.fold_in(self._split_key, 2**31 - 1), 0)
      self._eval_points = np.asarray(toy.sample_toy(self._toy_name, key, TOY_EVAL_EXAMPLES))
    for batch in range(self.num_eval_batches(local_batch_size)):
      lo, hi = self._host_rows(batch, local_batch_size)
      chunk = {"image": self._eval_points[lo:hi], "label": np.full((hi - lo,), -1, np.int32)}
      yield _pad_batch(chunk, hi - lo, local_batch_size, self.image_shape, np.float32)


def _tfds_name_hint(tfds, name) -> str:
  """``'; did you mean 'cifar10'?'`` for a name that TFDS knows in another spelling (score_sde's
  configs write ``'CIFAR10'``; TFDS names are snake_case), else ``''``."""
  import difflib  # pylint: disable=import-outside-toplevel
  try:
    known = list(tfds.list_builders(with_community_datasets=False)) + sorted(LOCAL_BUILDERS)
  except Exception:  # pylint: disable=broad-except  # a hint only
    return ""
  key = lambda n: str(n).lower().replace("_", "").replace("-", "")
  exact = [n for n in known if key(n) == key(name)]
  close = exact or difflib.get_close_matches(str(name).lower(), known, n=1, cutoff=0.8)
  return f"; did you mean {close[0]!r}?" if close else ""


def _tfds_source(name, split, data_dir):
  """`tfds.data_source` for a prepared data set, with clear errors for the usual mistakes."""
  tfds = _tfds()
  try:
    with tfds_temp_dir():
      builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f"unknown dataset {name!r}: not toy_<name> (names: {', '.join(toy.TOY_DATASETS)}), not "
        f"one of our builders ({', '.join(sorted(LOCAL_BUILDERS))}), and not a TFDS data set "
        f"registered or prepared in {data_dir!r}{_tfds_name_hint(tfds, name)}") from None
  if not builder.is_prepared():
    raise ValueError(
        f"TFDS data set {name!r} is not prepared in {data_dir!r}; prepare it once where it can be "
        f"downloaded, e.g. `tfds build {name} --data_dir={data_dir} --file_format=array_record`, "
        "and set config.data.data_dir") from None
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(
        f"TFDS data set {name!r} in {data_dir!r} is stored as {builder.info.file_format.value}; "
        "random access needs array_record: rebuild it with --file_format=array_record")
  available = sorted(builder.info.splits.keys())
  for split_name in _split_names(split):
    if split_name not in builder.info.splits:
      hint = ""
      if name in LOCAL_BUILDERS and name != "digits":  # digits always has train and test
        hint = (f" (splits come from the source files present when it was prepared; delete "
                f"{os.path.join(data_dir, name)} to prepare it again)")
      raise ValueError(f"split {split_name!r} (from {split!r}) is not in data set {name!r}; "
                       f"available splits: {available}{hint}")
  with tfds_temp_dir():
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def get_dataset(data_config, split, *, seed, process_index=None, process_count=None):
  """This host's view of one split of the data set named by `data_config.dataset`.

  Args:
    data_config: `config.data` (fields `dataset`, `data_dir`, `source_dir`, `image_size`,
      `num_channels`).
    split: TFDS split spec, e.g. 'train', 'test', 'test[:9000]'.
    seed: seed of the training order (TFDS data) or of the samples (toy data).
    process_index, process_count: this host and the number of hosts; default
      `jax.process_index()` and `jax.process_count()`.

  Returns:
    a `TfdsDataset` or `ToyDataset`: `num_examples_total`, `image_shape`, `get_batch(step,
    local_batch_size)`, `iterate(local_batch_size)`.
  """
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if process_count <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in range for process_count "
                     f"{process_count}")
  name = str(_config_value(data_config, "dataset", ""))
  if not name:
    raise ValueError(f"data_config.dataset must name a data set, got {name!r}")
  common = dict(name=name, split=split, seed=seed, process_index=process_index,
                process_count=process_count)

  pairs_dir = str(_config_value(data_config, "pairs_dir", ""))
  if pairs_dir and split == _config_value(data_config, "train_split", "train"):
    from jaxgen.data import pairs  # pylint: disable=g-import-not-at-top
    return pairs.PairsDataset(pairs_dir, **common)  # reflow pairs stand in for the training split

  if name.startswith("toy_"):
    toy_name = name[len("toy_"):]
    if not toy.is_toy_name(toy_name):
      raise ValueError(f"unknown dataset {name!r}; toy data sets are "
                       f"{', '.join('toy_' + n for n in toy.TOY_DATASETS)} and toy_gmm<D>")
    dim = int(_config_value(data_config, "dim", toy.toy_dim(toy_name)) or toy.toy_dim(toy_name))
    if dim != toy.toy_dim(toy_name):
      raise ValueError(f"data.dim = {dim} does not match dataset {name!r}, whose examples have "
                       f"{toy.toy_dim(toy_name)} dimensions")
    if split not in _TOY_SPLITS:
      raise ValueError(f"split {split!r} is not a toy split; use one of {list(_TOY_SPLITS)}")
    return ToyDataset(toy_name, **common)

  num_levels = _check_num_levels(name, _config_value(data_config, "num_levels", None))
  data_dir = _resolve_data_dir(_config_value(data_config, "data_dir", ""))
  if name in LOCAL_BUILDERS:
    prepare_local_dataset(name, data_dir, _config_value(data_config, "source_dir", ""))
  source = _tfds_source(name, split, data_dir)
  image_size = int(_config_value(data_config, "image_size", 0))
  if image_size <= 0:
    raise ValueError(f"data_config.image_size must be positive, got {image_size}")
  num_channels = int(_config_value(data_config, "num_channels", 0))
  spec = _SOURCE_SPECS.get(name, _SourceSpec())
  return TfdsDataset(source, image_size=image_size, num_channels=num_channels, spec=spec,
                     num_levels=num_levels, **common)


def _check_num_levels(name, num_levels):
  """`config.data.num_levels` checked against what data set `name` holds (None: not given).

  The transforms scale by it: digits (levels 0..16) read with 256 levels train on images in
  [-1, -0.87] (samples come out nearly black), MNIST read with 17 levels on values up to 31, with
  no error. Data sets of `DATASET_LEVELS` must match exactly; other (8-bit) TFDS images allow at
  most 256 levels, and every read checks that no pixel reaches `num_levels`.
  """
  if num_levels is None:
    return None
  num_levels = check_num_levels(num_levels, "config.data.num_levels")
  expected = DATASET_LEVELS.get(name)
  if expected is not None and num_levels != expected:
    raise ValueError(f"data set {name!r} has {expected} levels per pixel, but "
                     f"config.data.num_levels is {num_levels}: set --config.data.num_levels="
                     f"{expected}")
  if num_levels > UINT8_LEVELS:
    raise ValueError(f"config.data.num_levels is {num_levels}, but TFDS data set {name!r} is read "
                     f"as uint8 images (at most {UINT8_LEVELS} levels)")
  return num_levels
