"""Built-in demo: a small CNN trained on procedural shape images with known object masks.

The dataset (:mod:`funcattr.demo.data`) draws one shape of a known class (:data:`CLASSES`) on a
cluttered background per image and records the shape's pixels as a boolean mask, so a good
explanation of the class score must lie on the mask. :class:`DemoNet` is a small VGG-style CNN
made of standard modules; :func:`load_demo_model` loads its weights shipped with the package,
as trained by the deterministic script :mod:`funcattr.demo.train`, and
:func:`load_demo_samples` loads sample images of the test split with their masks.

Examples
--------
>>> from funcattr.demo import load_demo_model, load_demo_samples
>>> model = load_demo_model()
>>> images, labels, masks, names = load_demo_samples()
>>> bool((model(images).argmax(dim=1) == labels).all())
True
"""

from funcattr.demo.data import CLASSES, IMAGE_SIZE, NUM_CLASSES, make_dataset, object_masks, sample
from funcattr.demo.model import DemoNet, load_demo_model, load_demo_samples, load_sample_index

__all__ = [
    "CLASSES",
    "IMAGE_SIZE",
    "NUM_CLASSES",
    "DemoNet",
    "load_demo_model",
    "load_demo_samples",
    "load_sample_index",
    "make_dataset",
    "object_masks",
    "sample",
]
