"""Writing a finished run: its output folder (images, scores, manifest) and the overview figure."""
