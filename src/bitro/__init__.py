"""bitro: predict bulk and spatial gene expression from H&E whole-slide images (BiTro)."""

__version__ = "0.1.0"
