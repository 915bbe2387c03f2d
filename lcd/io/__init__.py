"""File formats live here: images and masks, atomic writes, PNG metadata."""
