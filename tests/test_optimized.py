"""Text written into outputs does not come from docstrings: under `python -OO` (docstrings stripped) the features
stage imports and the definitions features.json records are the same as in a plain run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from resa_interp.features.boundary import BOUNDARY
from resa_interp.features.extract import DEFINITION
from resa_interp.features.stability import STABILITY_RULE

ROOT = Path(__file__).resolve().parents[1]
RECORDED = (
    "import json\n"
    "from resa_interp.features.boundary import BOUNDARY\n"
    "from resa_interp.features.extract import DEFINITION\n"
    "from resa_interp.features.stability import STABILITY_RULE\n"
    "print(json.dumps([DEFINITION, STABILITY_RULE, BOUNDARY]))\n"
)
"""Prints the texts features.json records (`definition`, `seeds.matching`, `boundary`), from the modules that
write them."""


def test_recorded_texts_survive_python_oo():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-OO", "-c", RECORDED], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [DEFINITION, STABILITY_RULE, BOUNDARY]
    assert DEFINITION.startswith("Definition (also written into features.json): with SAEs applied after layers")
    assert STABILITY_RULE.startswith("For each pair of seeds (r, s) of a layer") and "\n" not in STABILITY_RULE
