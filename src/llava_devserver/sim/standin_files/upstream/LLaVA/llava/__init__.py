"""LLaVA (stand-in for the simulated fleet): the pretraining entry point and a miniature model."""
