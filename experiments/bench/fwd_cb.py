"""bf16 forward with and without XLA command buffers, as per-executable options, in one process
(run 21): windows of 30 pipelined calls alternating between the two executables, and DDIM ms per
network evaluation from 20 vs 1 steps. Since run 22 this is one spec pair of ``ab.py`` (which
wrote the same measurement out again); the JSON keys are ``ab.py``'s.

    python experiments/bench/fwd_cb.py --out r.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ab  # pylint: disable=wrong-import-position

if __name__ == "__main__":
  sys.argv[1:1] = ["--specs", "bf16_tb_ts,bf16_tb_ts@nocmdbuf", "--parts", "fwd,ddim"]
  ab.main()
