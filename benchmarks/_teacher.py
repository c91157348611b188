"""The teacher GPT the compression benchmarks share: ``--teacher DIR`` when given, else one
trained once under the output folder as the lab's documents describe it (the ``small``
preset: 4 layers, 4 heads, 128 wide, char-level, 2000 steps; 30 in a ``--quick`` run) and
reused by later runs with the same ``--out``."""
from __future__ import annotations

import os
import subprocess
import sys

STEPS, QUICK_STEPS = 2000, 30


def teacher_run(given: str | None, out: str, quick: bool = False, env: dict | None = None) -> str:
    """The teacher's run folder: ``given`` or ``out/teacher`` (trained there if missing)."""
    if given:
        return given
    path = os.path.join(out, "teacher")
    if not (os.path.isdir(os.path.join(path, "last")) or os.path.isdir(os.path.join(path,
                                                                                     "best"))):
        steps = QUICK_STEPS if quick else STEPS
        cmd = ["train", "--model", "gpt", "--config", "small", f"--max_steps={steps}",
               "--progress=false", "--out", path]
        print(f"training the teacher: tinyllm {' '.join(cmd)}", flush=True)
        p = subprocess.run([sys.executable, "-m", "tinyllm", *cmd], capture_output=True,
                           text=True, env=env)
        if p.returncode:
            raise SystemExit(f"training the teacher failed ({p.returncode}): "
                             f"{p.stderr.strip()[-500:]}")
    return path
