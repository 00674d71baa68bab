"""Data: TFDS input sharded over hosts, builders of our own, toy 2-D sets, batch transforms."""
from jaxgen.data.pipeline import check_batch_size
from jaxgen.data.pipeline import get_dataset
from jaxgen.data.toy import TOY_DATASETS
from jaxgen.data.toy import sample_toy
from jaxgen.data.transforms import postprocess
from jaxgen.data.transforms import preprocess

__all__ = [
    "check_batch_size",
    "get_dataset",
    "postprocess",
    "preprocess",
    "sample_toy",
    "TOY_DATASETS",
]
