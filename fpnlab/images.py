"""The trace's sample photo: the top 438 rows of matplotlib's ``grace_hopper.jpg`` (512 wide)."""
from __future__ import annotations

from .reference import reference_image_size


def sample_image():
    """The trace's input as a PIL RGB image, (w, h) = (512, 438). No download: matplotlib ships it."""
    from matplotlib import cbook
    from PIL import Image

    height, width = reference_image_size()
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        img = Image.open(f).convert("RGB")
        img.load()
    if img.width != width or img.height < height:
        raise RuntimeError(f"grace_hopper.jpg is {img.width}x{img.height}; the trace needs "
                           f"{width} wide and at least {height} high")
    return img.crop((0, 0, width, height))
