"""The training loop, its callbacks, schedules and checkpoints."""
