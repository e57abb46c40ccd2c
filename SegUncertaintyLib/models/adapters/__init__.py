"""One adapter per model format: each supplies the forward pass, preprocessing and postprocessing;
sampling and the accumulation of uncertainty stay in SegUncertaintyLib.inference."""
