"""Model loading (one place) and the tiny random-weight models of the real architectures."""
