"""Lightning callbacks, by concern: `loss`, `images`, `metrics`, `averaging` (EMA) and `resume`."""
