"""The synthesis runner: balanced, resumable, sharded generation of augmentation sets."""
