"""Lightning callbacks, by concern: `images` (TensorBoard grids), `metrics` (curves that judge the model
while it trains) and `resume` (what a checkpoint needs for a resumed run to equal an uninterrupted one)."""
