"""PocketSeg core: small, fast 3D segmentation networks (PocketNet, LV-Net) in pure PyTorch.

No Slicer import anywhere in this package: the Slicer modules depend on it, never the reverse.
"""

__version__ = "0.1.0"
