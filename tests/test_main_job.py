"""The README's main job: digits 8x8 on the CPU, beating a per-pixel histogram model on test
bits/dim, with a non-blank sample grid. Its wall time is printed, not asserted (speed targets
live in benchmarks, not in timed tests); the subprocess timeout only guards against a hang."""
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def histogram_bits_per_dim(train_levels, test_levels, num_levels=17, alpha=0.5):
  """Independent per-pixel categorical model (add-alpha smoothing) fitted on the training data."""
  d = train_levels.shape[1]
  counts = np.stack([np.bincount(train_levels[:, j], minlength=num_levels) for j in range(d)])
  probs = (counts + alpha) / (counts + alpha).sum(1, keepdims=True)
  logp = np.log2(probs[np.arange(d)[None], test_levels]).sum(1)
  return float(-logp.mean() / d)


def test_main_job_beats_histogram_and_writes_grid(tmp_path):
  workdir = tmp_path / "digits"
  env = dict(os.environ, PYTHONUNBUFFERED="1",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  start = time.time()
  proc = subprocess.run(
      [sys.executable, "-m", "jaxgen.main", "--config=configs/digits/vp_unet.py",
       f"--workdir={workdir}", "--mode=train"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)  # a hang guard only
  wall = time.time() - start
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-4000:]
  match = re.search(r"test bits/dim at step 4000 \(297 examples\): ([0-9.]+)", out)
  assert match, out[-2000:]   # the whole test split, at the last step
  bpd = float(match.group(1))
  summary = json.load(open(workdir / "train_summary.json"))
  assert abs(summary["bpd"] - bpd) < 1e-3
  assert summary["eval_step"] == 4000 and summary["nll_examples"] == 297

  levels = load_digits().images.reshape(-1, 64).astype(int)
  baseline = histogram_bits_per_dim(levels[:1500], levels[1500:])
  print(f"main job: {wall:.0f} s, test bits/dim {bpd:.4f}, histogram {baseline:.4f}")
  assert bpd < baseline, (bpd, baseline)

  grid = re.search(r"sample grid: (\S+\.png)", out)
  assert grid, out[-2000:]
  image = np.asarray(Image.open(grid.group(1)), dtype=np.float32)
  assert image.size > 0 and image.std() > 20.0   # not blank
