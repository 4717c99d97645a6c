"""The command line, `resa-interp`: a thin shell over the stages, one module per command group.

Takes command-line arguments; builds each stage's config dataclass and calls the stage (`model.py`: info, attach;
`sae.py`: train-saes, cache-activations; `features.py`: features; `interventions.py`: steer, trace;
`dashboard.py`: dashboard; `layers.py`: select-layers; `tuning.py`: tune; `evaluation.py`: eval, sweep;
`export.py`: export). `app.py` registers them and is the console entry point. Options that several commands
share are declared once in `options.py`; options declared by a config field are read from its source by
`fields.py`. Command functions import their stage when they run, so that `--help` and one-line input errors
answer without loading torch and transformers.
"""

from resa_interp.cli.app import app, main

__all__ = ["app", "main"]
