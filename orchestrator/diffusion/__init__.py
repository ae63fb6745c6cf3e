"""What the diffusion tasks and method share: the UNet and its module presets, DDPM / DDIM
sampling, pixel ranges and grids, sampling settings. The tasks are
``orchestrator.tasks.class_erasure`` and ``orchestrator.tasks.text_to_image``; the method is
``orchestrator.methods.scissorhands_diffusion``."""
