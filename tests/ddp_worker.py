"""Runs one experiment from a JSON config; used by test_trainer.py under torchrun and alone."""

import json
import sys

from lmdistill.api import distill

if __name__ == "__main__":
    distill(json.loads(open(sys.argv[1]).read()))
