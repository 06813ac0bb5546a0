"""Real example photos for an ImageNet model when no dataset is given: scikit-image's data module.

scikit-image ships a few public-domain or freely licensed photographs with its wheel
(``skimage.data``). They are an optional extra (``pip install alexnet[examples]``);
without scikit-image, :func:`example_photos` returns an empty list and callers simply
offer no examples. Each photo names the ILSVRC classes a correct answer would fall in,
where there are any: the astronaut is kept on purpose as a photo of something (a person)
that is not one of the 1000 classes, for the "the model only knows these classes" note.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger("alexnet")


@dataclass(frozen=True)
class ExamplePhoto:
    """One photo: ``image`` uint8 ``[3, H, W]``, a caption, and the synsets that would be right."""

    name: str
    caption: str
    expected: tuple[str, ...]
    image: Tensor


# (skimage.data function, caption, ILSVRC synsets a correct label falls in)
EXAMPLES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("chelsea", "Chelsea the cat", ("n02123045", "n02123159", "n02124075")),  # tabby, tiger cat, Egyptian cat
    ("coffee", "a cup of coffee", ("n07920052", "n07930864", "n03063599")),  # espresso, cup, coffee mug
    ("rocket", "a rocket on its launch pad", ("n03773504", "n04008634", "n04266014")),  # missile, projectile, shuttle
    ("astronaut", "an astronaut: people are not among the 1000 ImageNet classes", ()),
)


def example_photos() -> list[ExamplePhoto]:
    """The photos scikit-image can provide here; ``[]`` when it is not installed.

    A photo that scikit-image cannot open (some versions fetch files on demand, and there
    may be no network) is skipped with a debug message, never an error.
    """
    try:
        from skimage import data
    except ImportError:
        return []
    out = []
    for name, caption, expected in EXAMPLES:
        try:
            array = getattr(data, name)()
        except Exception as exc:  # a missing file or no network: this photo is simply not offered
            log.debug("scikit-image example %s unavailable: %s", name, exc)
            continue
        image = torch.as_tensor(array)
        if image.dim() == 2:
            image = image.unsqueeze(-1).expand(-1, -1, 3)
        out.append(ExamplePhoto(name, caption, expected, image[..., :3].permute(2, 0, 1).contiguous().to(torch.uint8)))
    return out
