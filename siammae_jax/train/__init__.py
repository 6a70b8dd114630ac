"""Sharded SiamMAE pre-training: mesh, optimizer, state, step, checkpoints, loop."""
