"""Lightning callbacks, by concern: `loss` (the training scalars and the non-finite stop), `images`
(TensorBoard grids), `metrics` (curves and scores that judge the model), `averaging` (a moving average of
the weights) and `resume` (what a checkpoint needs for a resumed run to equal an uninterrupted one)."""
