"""``python -m tinyllm.bench …`` is ``tinyllm bench …``."""
import sys

from ..cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
