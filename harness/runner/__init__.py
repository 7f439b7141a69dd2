"""Running the cross product: cell contexts, the local runner, the Slurm launcher, the dry run."""
