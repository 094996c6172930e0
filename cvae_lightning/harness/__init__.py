"""How a run is composed, launched, checkpointed and resumed; private library APIs only in `compat`."""
