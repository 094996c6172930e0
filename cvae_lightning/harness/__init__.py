"""How a run is composed, launched and kept: config checks, the training entry, checkpoints and atomic files,
loggers, Hydra callbacks and the sweep summary, SLURM, the Optuna search, process settings, and every private
library API fenced in `compat`."""
