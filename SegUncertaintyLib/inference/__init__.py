"""Inference: sampling, the streaming engine, maps, subject scores, preprocessing and the pipeline."""
