"""Image input/output: reading and validating images, writing a run's outputs, the overview picture."""
