"""Training: the trainer, its step, the objective, losses, optimiser, checkpoints,
sharding and pretrained initialisation."""
