"""The bottom layer: vocabulary, errors, methods, options, manifest and plain file helpers; no torch."""
