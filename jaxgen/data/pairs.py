"""Reflow pairs on disk: the chunked ``(z, x = ODE(z))`` couplings of a trained flow.

Layout of a pairs directory (written by :func:`jaxgen.rectified_flow.generate_pairs`)::

    <dir>/meta.json            what was generated and how (solver, seed, chunking, model step)
    <dir>/chunk_000000.npz     z (n, ...) float32, x (n, ...) float32, nfe () int32, and for a
                               class-conditional teacher y (n,) int32: the class of each solve
    <dir>/chunk_000001.npz     ...

Every file appears by an atomic rename of a finished temporary file, so a chunk that exists is
complete; an interrupted generation leaves at most a ``*.tmp*`` file behind, which is ignored.

:class:`PairsDataset` serves the pairs with the interface of the datasets of
:mod:`jaxgen.data.pipeline` (``num_examples``, ``image_shape``, ``get_batch(step,
local_batch_size)``, ``num_eval_batches``, ``iterate``), returning ``{'image': x, 'noise': z,
'label': y}`` (``y`` = -1 for pairs of an unconditional teacher): ``x`` is already in model space
(float32, e.g. ``[-1, 1]`` images), so it must not be preprocessed again. ``jaxgen.data.pipeline.get_dataset`` returns it for the training split when
``config.data.pairs_dir`` names a directory.
"""
import glob
import json
import os
import re

import numpy as np

from jaxgen._checks import check_int
from jaxgen.data import pipeline

META_FILE = "meta.json"
FORMAT_VERSION = 1
_CHUNK_RE = re.compile(r"^chunk_(\d{6})\.npz$")
_SEED_SALT = 0x70616972  # "pair": keeps this permutation stream apart from other uses of a seed


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------
def chunk_path(directory, index):
  """Path of chunk ``index`` (an int >= 0) in ``directory``."""
  return os.path.join(directory, f"chunk_{int(index):06d}.npz")


def _atomic_write(path, write_fn):
  """Write through ``write_fn(file)`` into a temporary file, fsync, then rename onto ``path``."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      write_fn(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_chunk(directory, index, z, x, nfe, labels=None):
  """Atomically write chunk ``index``: ``z``, ``x`` ``(n, ...)`` float32, the solver's ``nfe``
  (one entry per solve of the chunk) and, for a class-conditional teacher, the classes ``labels``
  ``(n,)`` (ints >= 0) that each ``x`` was generated with."""
  z, x = np.asarray(z, np.float32), np.asarray(x, np.float32)
  if z.shape != x.shape or z.ndim < 2:
    raise ValueError(f"z and x must share a shape (n, ...), got {z.shape} and {x.shape}")
  arrays = {"z": z, "x": x, "nfe": np.asarray(nfe, np.int32)}
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (len(z),) or not np.issubdtype(labels.dtype, np.integer) or (
        labels.size and labels.min() < 0):
      raise ValueError(f"`labels` must be {len(z)} classes >= 0 (one per pair), got an array of "
                       f"shape {labels.shape} and dtype {labels.dtype}"
                       + (f" with minimum {labels.min()}" if labels.size and np.issubdtype(
                           labels.dtype, np.number) else ""))
    arrays["y"] = labels.astype(np.int32)
  _atomic_write(chunk_path(directory, index), lambda f: np.savez(f, **arrays))


def read_chunk(directory, index):
  """``{'z': (n, ...), 'x': (n, ...), 'nfe': (), 'y': (n,)}`` of chunk ``index`` (numpy arrays);
  ``y`` (the classes) only in the chunks of a class-conditional teacher."""
  with np.load(chunk_path(directory, index)) as data:
    return {key: np.asarray(data[key]) for key in ("z", "x", "nfe", "y") if key in data}


def write_meta(directory, meta):
  """Atomically write ``meta.json`` (a JSON-serialisable dict)."""
  text = json.dumps(meta, indent=1, sort_keys=True).encode()
  _atomic_write(os.path.join(directory, META_FILE), lambda f: f.write(text))


def read_meta(directory):
  """The dict of ``<directory>/meta.json``; ValueError naming the directory if there is none."""
  path = os.path.join(directory, META_FILE)
  if not os.path.exists(path):
    raise ValueError(f"pairs directory {directory!r} has no {META_FILE}: generate pairs first "
                     f"(--mode=reflow on the workdir of a trained flow)")
  with open(path) as f:
    return json.load(f)


def existing_chunks(directory):
  """Sorted indices of the complete chunks in ``directory`` (an empty list if it does not exist)."""
  if not os.path.isdir(directory):
    return []
  found = []
  for name in os.listdir(directory):
    match = _CHUNK_RE.match(name)
    if match:
      found.append(int(match.group(1)))
  return sorted(found)


def missing_chunks(directory, num_chunks):
  """Indices in ``range(num_chunks)`` without a complete chunk file, ascending."""
  have = set(existing_chunks(directory))
  return [i for i in range(int(num_chunks)) if i not in have]


def remove_partial_files(directory):
  """Delete the temporary files an interrupted writer left behind; returns how many."""
  stale = glob.glob(os.path.join(directory, "*.tmp-*"))
  for path in stale:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass
  return len(stale)


def num_classes(meta) -> int:
  """Classes of the teacher that generated the pairs of ``meta`` (``meta.json``); 0: unconditional
  (pairs carry no labels)."""
  return int(meta.get("num_classes", 0) or 0)


def load_pairs(directory, start=0, stop=None, *, with_labels=False):
  """Pairs ``[start, stop)`` of a complete directory as ``(z, x)``, each ``(n, ...)`` float32;
  with ``with_labels`` ``(z, x, y)``, ``y`` ``(n,)`` int32 the classes of a class-conditional
  teacher (-1 for the pairs of an unconditional one).

  Raises ValueError naming the missing chunks if the generation is not finished.
  """
  meta = read_meta(directory)
  num_pairs, chunk_size = int(meta["num_pairs"]), int(meta["chunk_size"])
  stop = num_pairs if stop is None else int(stop)
  if not 0 <= start <= stop <= num_pairs:
    raise ValueError(f"pair range [{start}, {stop}) is outside [0, {num_pairs}) of {directory!r}")
  first, last = start // chunk_size, -(-stop // chunk_size)
  missing = [i for i in missing_chunks(directory, meta["num_chunks"]) if first <= i < last]
  if missing:
    shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
    raise ValueError(f"pairs directory {directory!r} is incomplete: {len(missing)} of "
                     f"{meta['num_chunks']} chunks missing ({shown}); resume the generation with "
                     f"--mode=reflow")
  shape = tuple(meta["shape"])
  zs = np.empty((stop - start,) + shape, np.float32)
  xs = np.empty((stop - start,) + shape, np.float32)
  ys = np.full((stop - start,), -1, np.int32)
  labelled = num_classes(meta) > 0
  for index in range(first, last):
    lo = max(start, index * chunk_size)
    hi = min(stop, (index + 1) * chunk_size)
    if hi <= lo:
      continue
    chunk = read_chunk(directory, index)
    zs[lo - start:hi - start] = chunk["z"][lo - index * chunk_size:hi - index * chunk_size]
    xs[lo - start:hi - start] = chunk["x"][lo - index * chunk_size:hi - index * chunk_size]
    if with_labels and labelled:
      if "y" not in chunk:
        raise ValueError(f"chunk {index} of {directory!r} has no labels, but its meta.json records "
                         f"a class-conditional teacher (num_classes={num_classes(meta)})")
      ys[lo - start:hi - start] = chunk["y"][lo - index * chunk_size:hi - index * chunk_size]
  if with_labels and labelled and len(ys) and not 0 <= ys.min() <= ys.max() < num_classes(meta):
    raise ValueError(f"the labels of {directory!r} must lie in [0, {num_classes(meta)}) "
                     f"(meta.json's num_classes), found {ys.min()} .. {ys.max()}")
  return (zs, xs, ys) if with_labels else (zs, xs)


# --------------------------------------------------------------------------------------------------
# do the pairs fit a config?
# --------------------------------------------------------------------------------------------------
def _process_from_repr(text):
  """The process a ``meta.json`` records as its ``repr`` (``VPSDE(beta_min=0.1, ...)``,
  ``SourceLinearPath(source='toy_8gaussians')``), rebuilt from keyword literals only; None if
  it is not one of jaxgen's processes or does not parse."""
  import ast  # pylint: disable=import-outside-toplevel
  from jaxgen import processes, rectified_flow  # pylint: disable=import-outside-toplevel
  classes = {name: cls for name, cls in vars(processes).items()
             if isinstance(cls, type) and issubclass(cls, processes.Process)}
  classes["SourceLinearPath"] = rectified_flow.SourceLinearPath
  try:
    call = ast.parse(str(text), mode="eval").body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
            and call.func.id in classes and not call.args):
      return None
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    return classes[call.func.id](**kwargs)
  except Exception:  # pylint: disable=broad-except  # (then the reprs are compared as text)
    return None


def _prior(process):
  """The distribution of a process's noise end, as text: its toy source or ``N(0, s^2 I)``."""
  source = getattr(process, "source", None)
  if source:
    return f"the {source} source"
  return f"N(0, {float(process.prior_std):g}^2 I)"


def data_scaling(data_config) -> dict:
  """The fields of ``config.data`` that fix the space reflow pairs' ``x`` live in (image data:
  ``centered``, ``num_levels``), as recorded in ``meta.json``'s ``metadata``; empty for toy data."""
  if str(data_config.get("dataset", "")).startswith("toy_"):
    return {}
  return {"data_centered": bool(data_config.get("centered", True)),
          "data_num_levels": int(data_config.get("num_levels", 256))}


def check_pairs_fit(directory, *, shape, process, data_config=None, model_classes=None):
  """Raise ValueError unless the pairs in ``directory`` fit a config with examples of ``shape``
  and noise process ``process``.

  The pairs' ``meta.json`` records the example shape and the process (``repr``) whose prior
  drew their ``z``. The shapes must be equal; the process must be the same, or at least draw its
  noise from the same prior (e.g. the VP SDE's and the linear path's N(0, I): a flow trained on
  a diffusion model's ODE pairs); pairs of another prior (``data.source``) are refused, since the
  trained model would then sample and evaluate likelihoods from the wrong noise. With
  ``data_config``, the data scaling recorded by ``--mode=reflow`` (:func:`data_scaling`) must
  match it too. With ``model_classes`` (``config.model.num_classes``) > 0, the pairs must come from a
  class-conditional teacher of as many classes (they carry the labels the network is trained on);
  an unconditional network may train on labelled pairs (it ignores the labels).
  """
  meta = read_meta(directory)
  theirs_classes, mine_classes = num_classes(meta), int(model_classes or 0)
  if mine_classes > 0 and theirs_classes != mine_classes:
    what = (f"a teacher of {theirs_classes} classes" if theirs_classes else
            "an unconditional teacher: they carry no class labels")
    raise ValueError(f"config.model.num_classes={mine_classes}, but the reflow pairs in "
                     f"{os.fspath(directory)!r} come from {what}; train a network of the teacher's "
                     f"classes (config.model.num_classes={theirs_classes}) or make pairs with a "
                     f"class-conditional teacher of {mine_classes} classes")
  theirs, mine = tuple(int(s) for s in meta.get("shape", ())), tuple(int(s) for s in shape)
  if theirs != mine:
    raise ValueError(f"reflow pairs in {os.fspath(directory)!r} have examples of shape {theirs}, "
                     f"but the config's data (config.data: dataset, dim / image_size, "
                     f"num_channels) has shape {mine}")
  if data_config is not None:
    recorded_scaling = meta.get("metadata", {})
    for key, value in data_scaling(data_config).items():
      if key in recorded_scaling and recorded_scaling[key] != value:
        field = key.replace("data_", "config.data.", 1)
        raise ValueError(f"reflow pairs in {os.fspath(directory)!r} hold data scaled with "
                         f"{field} = {recorded_scaling[key]!r}, but the config has {field} = "
                         f"{value!r}: the pairs' images and the evaluation data would live in "
                         f"different ranges; set {field} to the teacher's")
  recorded = meta.get("process")
  if recorded is None or recorded == repr(process):
    return
  other = _process_from_repr(recorded)
  if other is None or _prior(other) != _prior(process):
    drawn = f" (noise z from {_prior(other)})" if other is not None else ""
    raise ValueError(f"reflow pairs in {os.fspath(directory)!r} were generated by {recorded}"
                     f"{drawn}, but the config's process is {process!r} (noise from "
                     f"{_prior(process)}; config.process, config.data.source): train on pairs "
                     f"of the same source, or set config.data.source to theirs")


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------
class PairsDataset(pipeline.EpochOrder):
  """One host's shard of a directory of reflow pairs, held in memory.

  Host ``i`` of ``n`` takes pairs ``[N i / n, N (i + 1) / n)``. Training batches are a pure function
  of ``(seed, step)``: the shard is read as endless epochs, epoch ``e`` in the order of a
  permutation drawn from ``(seed, e)``, and batch ``step`` holds positions
  ``[step b, (step + 1) b)`` of that sequence (as the TFDS datasets of
  :mod:`jaxgen.data.pipeline`, so resuming is exact).

  Attributes:
    directory, name, split: where the pairs are, the data set name and split it stands for.
    num_examples: pairs in this host's shard; num_examples_total: pairs over all hosts.
    image_shape: shape of one ``x`` (and ``z``).
    meta: the generation's ``meta.json``.
    num_classes: the teacher's classes (0: unconditional, labels -1).
  """
  seed_salt = _SEED_SALT

  def __init__(self, directory, *, name="pairs", split="train", seed=0, process_index=0,
               process_count=1):
    self.directory = os.fspath(directory)
    self.name, self.split, self.seed = name, split, int(seed)
    self.process_index, self.process_count = process_index, process_count
    self.meta = read_meta(self.directory)
    self.num_examples_total = int(self.meta["num_pairs"])
    start = self.num_examples_total * process_index // process_count
    end = self.num_examples_total * (process_index + 1) // process_count
    self.num_examples = end - start
    if self.num_examples <= 0:
      raise ValueError(f"pairs directory {self.directory!r} holds {self.num_examples_total} pairs, "
                       f"too few to give one to each of {process_count} processes")
    self.image_shape = tuple(self.meta["shape"])
    self.num_classes = num_classes(self.meta)
    self._z, self._x, self._y = load_pairs(self.directory, start, end, with_labels=True)

  def _rows(self, indices):
    return {"image": self._x[indices], "noise": self._z[indices], "label": self._y[indices]}

  def get_batch(self, step, local_batch_size):
    """Training batch ``step``: ``{'image': x, 'noise': z}`` float32 ``(b, ...)``, ``label``
    ``(b,)`` int32 (the teacher's classes; -1 for an unconditional teacher)."""
    return self._rows(self.batch_indices(step, local_batch_size))

  def num_eval_batches(self, local_batch_size):
    """Batches that :meth:`iterate` yields; the same on every host."""
    local_batch_size = check_int(local_batch_size, "local_batch_size")
    largest_shard = -(-self.num_examples_total // self.process_count)
    return -(-largest_shard // local_batch_size)

  def iterate(self, local_batch_size):
    """One ordered pass over this host's pairs in padded batches (``mask`` False on padding).

    Yields:
      dict(image=(b, ...) float32, noise=(b, ...) float32, label=(b,) int32, mask=(b,) bool).
    """
    local_batch_size = check_int(local_batch_size, "local_batch_size")
    for batch in range(self.num_eval_batches(local_batch_size)):
      lo = min(batch * local_batch_size, self.num_examples)
      hi = min(lo + local_batch_size, self.num_examples)
      out = {"image": np.zeros((local_batch_size,) + self.image_shape, np.float32),
             "noise": np.zeros((local_batch_size,) + self.image_shape, np.float32),
             "label": np.full((local_batch_size,), -1, np.int32)}
      out["image"][:hi - lo] = self._x[lo:hi]
      out["noise"][:hi - lo] = self._z[lo:hi]
      out["label"][:hi - lo] = self._y[lo:hi]
      out["mask"] = np.arange(local_batch_size) < hi - lo
      yield out
