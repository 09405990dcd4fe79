"""Checkpoint files, in one place: reading any supported format without running code from the file (`read`),
the official OneNIP/UniAD layouts and their conversion (`official`), and what a checkpoint says about its model:
the metadata it records, adopting it for test/predict, the identity check and loading the weights (`model`).

Saving during training (the atomic writer, `last.ckpt`, the RNG states) is `anomaly_zoo.checkpointing`.
The submodules are imported directly (`from anomaly_zoo.checkpoints.read import read_checkpoint`): `read` is a leaf
that the backbone loaders use too.
"""
