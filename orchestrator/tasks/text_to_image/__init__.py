"""Text-to-image: a local Stable Diffusion pipeline forgets a concept named by prompts."""
