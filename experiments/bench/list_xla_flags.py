"""Lists the XLA GPU flag names compiled into the installed jaxlib and CUDA plugin.

XLA's flags change between releases; this shows which of the ones the benchmark notes use exist
on the machine at hand (e.g. ``python experiments/bench/list_xla_flags.py autotune triton``).
"""
import glob
import os
import re
import sys

import jaxlib

PATTERN = re.compile(rb"xla_gpu_[a-z0-9_]{3,80}")


def main(words):
  roots = [os.path.dirname(jaxlib.__file__)]
  roots += glob.glob(os.path.join(os.path.dirname(os.path.dirname(jaxlib.__file__)), "jax_cuda*"))
  names = set()
  for root in roots:
    for path in glob.glob(os.path.join(root, "**", "*.so*"), recursive=True):
      with open(path, "rb") as f:
        names.update(m.decode() for m in PATTERN.findall(f.read()))
  for name in sorted(names):
    if not words or any(w in name for w in words):
      print(name)


if __name__ == "__main__":
  main(sys.argv[1:])
