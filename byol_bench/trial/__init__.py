"""One trial, plain PyTorch and no Ray: data to batches and views, the method, the training loop, its state and checkpoint, schedules, instrumentation, DDP, evaluation and provenance."""
