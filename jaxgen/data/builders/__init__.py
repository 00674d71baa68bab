"""TFDS builders of our own, for sources that need no download.

The classes are defined with `skip_registration=True`, so importing this package adds nothing to
TFDS's registry. Once prepared (array_record files in `data_dir`), `tfds.data_source(name,
data_dir=...)` finds them from the files on disk, with no code and no TensorFlow.
"""
import os

import tensorflow_datasets as tfds

from jaxgen.data.builders.digits import Digits
from jaxgen.data.builders.mnist_local import MnistLocal
from jaxgen.data.pipeline import tfds_temp_dir

LOCAL_BUILDERS = {"digits": Digits, "mnist_local": MnistLocal}


def prepare_local_dataset(name, data_dir=None, source_dir=""):
  """Builds our data set `name` into `data_dir` as array_record, unless already there.

  Args:
    name: a key of `LOCAL_BUILDERS`.
    data_dir: TFDS data_dir (None: TFDS's default, `~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
    source_dir: folder of raw files (manual_dir) for builders that read local files (mnist_local).

  Returns:
    the prepared `tfds.core.DatasetBuilder`.
  """
  if name not in LOCAL_BUILDERS:
    raise ValueError(f"no local builder named {name!r}; choose one of {sorted(LOCAL_BUILDERS)}")
  builder_cls = LOCAL_BUILDERS[name]
  with tfds_temp_dir():  # TFDS leaves an empty tmp...tfds folder per builder of an unprepared set
    builder = builder_cls(data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    return builder
  download_config = None
  if builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS:
    if not source_dir:
      raise ValueError(f"data set {name!r} reads local files: set config.data.source_dir to the "
                       f"folder holding them (got source_dir={source_dir!r})")
    given = os.fspath(source_dir)
    source_dir = os.path.abspath(os.path.expanduser(given))
    if not os.path.isdir(source_dir):
      relative = ("" if os.path.isabs(os.path.expanduser(given)) else
                  f" (a relative config.data.source_dir is resolved against the current "
                  f"directory, {os.getcwd()}: run from the folder the config expects or give an "
                  f"absolute path)")
      raise ValueError(f"config.data.source_dir {given!r} for data set {name!r} is not a folder: "
                       f"tried {source_dir}{relative}")
    check = getattr(builder_cls, "check_source_dir", None)
    if check is not None:
      # before TFDS starts (it would stop at an empty folder with an AssertionError and leave
      # folders behind in data_dir): which files are missing, as a ValueError naming the field
      try:
        check(source_dir)
      except ValueError as e:
        raise ValueError(f"config.data.source_dir {given!r} for data set {name!r}: {e}") from None
    download_config = tfds.download.DownloadConfig(manual_dir=source_dir)
  try:
    builder.download_and_prepare(download_config=download_config)
  except OSError:
    # Another process may have prepared the same folder first (TFDS renames a finished temporary
    # folder into place); anything else is re-raised.
    with tfds_temp_dir():
      builder = builder_cls(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      raise
  return builder


__all__ = ["Digits", "MnistLocal", "LOCAL_BUILDERS", "prepare_local_dataset"]
