"""Diffusion models: the generator, its references and evaluation, and Stable Diffusion
concept erasure. The task itself is ``orchestrator.tasks.diffusion``; the method is
``orchestrator.methods.scissorhands_diffusion``."""
