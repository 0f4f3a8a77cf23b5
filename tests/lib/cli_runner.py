"""What the command-line tests share: `mini-gpt ...` run in a fresh process, one thread."""

import os
import subprocess
import sys


def cli(*args, check=True):
    """Run `python -m mini_gpt.cli ARGS`; with check, assert it exited 0 (showing its stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every process
    proc = subprocess.run([sys.executable, "-m", "mini_gpt.cli", *args], capture_output=True, text=True, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc
