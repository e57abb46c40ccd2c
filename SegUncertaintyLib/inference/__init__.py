"""Inference: ``segment.segment_image`` dispatches to the sliding window (model_grid, sliding_window) or the
whole-volume path (whole_volume, accumulator); both end in ``assembly`` (maps, scores, outputs)."""
