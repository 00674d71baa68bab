"""TFDS builder `digits`: scikit-learn's 1,797 handwritten 8x8 digits (UCI optdigits test set).

Pixels are integer levels 0..16 (17 levels), stored raw as uint8 `(8, 8, 1)` tensors (no PNG: PNG
encoding in TFDS needs TensorFlow). The split is fixed: the first 1,500 images of
`sklearn.datasets.load_digits()` are `train`, the last 297 `test`, in scikit-learn's order.
"""
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NUM_TRAIN = 1500
NUM_EXAMPLES = 1797
NUM_LEVELS = 17

_CITATION = """\
@misc{optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
}"""


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """scikit-learn's 8x8 digits with a fixed 1,500 / 297 train / test split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version: raw uint8 levels 0..16, split 1,500 / 297."}

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS's own lookup needs the `importlib_resources` backport for builders inside packages.
    return epath.Path(__file__)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "scikit-learn's load_digits(): 1,797 8x8 grey images of handwritten digits, pixel "
            "values 0..16 (17 levels). train = first 1,500, test = last 297, in scikit-learn's "
            "order."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
        homepage=("https://scikit-learn.org/stable/modules/generated/"
                  "sklearn.datasets.load_digits.html"),
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships with scikit-learn.
    import sklearn.datasets  # pylint: disable=g-import-not-at-top

    digits = sklearn.datasets.load_digits()
    images, labels = digits.images, digits.target
    if images.shape != (NUM_EXAMPLES, 8, 8):
      raise ValueError(f"expected scikit-learn digits of shape ({NUM_EXAMPLES}, 8, 8), got "
                       f"{images.shape}")
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > 16:
      raise ValueError("expected scikit-learn digits to hold integer levels 0..16, got values in "
                       f"[{images.min()}, {images.max()}]")
    images = images.astype(np.uint8)[..., None]
    labels = labels.astype(np.int64)
    return {
        "train": self._generate_examples(images[:NUM_TRAIN], labels[:NUM_TRAIN], 0),
        "test": self._generate_examples(images[NUM_TRAIN:], labels[NUM_TRAIN:], NUM_TRAIN),
    }

  def _generate_examples(self, images, labels, offset):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield offset + i, {"image": image, "label": int(label)}
