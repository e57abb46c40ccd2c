"""The test suite, a package so that test folders may share names with installed modules (io, slicer)."""
