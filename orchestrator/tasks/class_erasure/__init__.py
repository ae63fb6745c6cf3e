"""Class erasure: a class-conditional diffusion generator on labelled images forgets one class."""
