"""Shared test settings.

Under CI (CI=true) hypothesis draws a fixed sequence of examples, so a run is reproducible;
locally it explores new examples each run and remembers failures in .hypothesis/.
"""
import os

import matplotlib
from hypothesis import settings

matplotlib.use("Agg")

from tinyllm import runtime  # noqa: E402

runtime.configure()      # as the command line runs: Numba on the workqueue threading layer

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
