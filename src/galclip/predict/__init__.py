"""Zero-shot catalogues for galaxies with only an image (or only a spectrum): ``galclip predict``."""
