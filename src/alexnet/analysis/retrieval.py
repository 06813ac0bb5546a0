"""Image retrieval by last-hidden-layer activations (the paper's Figure 4), exact and with binary codes.

The paper observes that images whose 4096-d last-hidden-layer vectors (fc7) are close in
Euclidean distance are semantically similar, and suggests compressing the vectors to
short binary codes for efficient retrieval. :class:`FeatureIndex` does both:

* exact search: squared Euclidean distance ``|q|^2 - 2 q.x + |x|^2`` as one matmul;
* binary search: ITQ codes (Gong & Lazebnik 2011: PCA to ``bits`` dimensions, then a
  learned rotation that minimises the quantisation error), packed 64 bits per int64
  word, Hamming distance by XOR + popcount in torch; optionally the best
  ``rerank`` x k candidates are re-ranked exactly, which recovers almost all of the
  exact recall for a fraction of the cost.

On disk (``save``/``load``): ``features.safetensors`` (features, labels, codes and the
projection) and ``index.json`` (paths, classes, the model it was built with and the layer:
the model's ``embedding_layer`` by default, fc7 in AlexNet's layout, conv7 in ``alexnet_fast``;
an index stored without one is fc7's).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from alexnet.checkpoint import ModelMeta
from alexnet.data.sampling import spaced_indices
from alexnet.errors import EvaluationError, IndexFormatError
from alexnet.evaluation import Predictor, iter_batches
from alexnet.files import atomic_write_bytes

INDEX_VERSION = 1
FEATURES_FILE = "features.safetensors"
INDEX_FILE = "index.json"


# --------------------------------------------------------------------------- binary codes


def _popcount64(x: Tensor) -> Tensor:
    """Bits set in each int64 (SWAR; torch has no popcount). Works on the two's complement."""
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56 & 0xFF


def pack_bits(bits: Tensor) -> Tensor:
    """bool ``[N, B]`` -> int64 ``[N, ceil(B / 64)]`` (bit j of word w is column 64 w + j)."""
    n, b = bits.shape
    words = math.ceil(b / 64)
    padded = torch.zeros(n, words * 64, dtype=torch.int64, device=bits.device)
    padded[:, :b] = bits.to(torch.int64)
    weights = torch.ones(64, dtype=torch.int64, device=bits.device) << torch.arange(64, device=bits.device)
    return (padded.view(n, words, 64) * weights).sum(-1)  # int64 wraps: bit 63 is the sign bit


def hamming(queries: Tensor, codes: Tensor, max_elements: int = 1 << 22) -> Tensor:
    """Hamming distances ``[Q, N]`` (int32) between packed codes ``[Q, W]`` and ``[N, W]``.

    XOR then popcount, over chunks of the database so that the ``[Q, n, W]`` intermediate
    stays below ``max_elements`` int64 values (32 MiB by default). Works on the packed codes
    alone (no unpacked copy), but is a dozen element-wise passes: on a CPU the
    :func:`hamming_matmul` form is much faster (see ``bench/retrieval.py``).
    """
    q, w = queries.shape
    out = torch.empty(q, codes.shape[0], dtype=torch.int32, device=codes.device)
    chunk = max(1, max_elements // max(1, q * w))
    for s in range(0, codes.shape[0], chunk):
        x = queries.unsqueeze(1) ^ codes[s : s + chunk].unsqueeze(0)  # [Q, n, W]
        out[:, s : s + chunk] = _popcount64(x).sum(-1, dtype=torch.int32)
    return out


def unpack_signs(codes: Tensor, bits: int) -> Tensor:
    """Packed codes ``[N, W]`` -> float32 ``[N, bits]`` of +1 (bit set) / -1 (bit clear)."""
    shifts = torch.arange(64, device=codes.device)
    unpacked = (codes.unsqueeze(-1) >> shifts) & 1  # [N, W, 64]
    return unpacked.flatten(1)[:, :bits].float() * 2 - 1


def hamming_matmul(query_signs: Tensor, signs: Tensor) -> Tensor:
    """Hamming distances from +-1 codes: ``(bits - s.t) / 2``, one BLAS matmul (exact in float32)."""
    bits = signs.shape[1]
    return ((bits - query_signs @ signs.T) * 0.5).round_().to(torch.int32)


@dataclass
class ITQ:
    """Iterative quantisation: ``code = sign((x - mean) @ projection) `` with an ITQ rotation."""

    mean: Tensor  # [D]
    projection: Tensor  # [D, bits]: PCA directions times the learned rotation

    @property
    def bits(self) -> int:
        return self.projection.shape[1]

    @classmethod
    def fit(cls, x: Tensor, bits: int = 256, iterations: int = 30, seed: int = 0) -> ITQ:
        bits = min(bits, x.shape[1], max(1, x.shape[0] - 1))
        mean = x.float().mean(0)
        xc = x.float() - mean
        # PCA: the top `bits` right singular vectors. A randomized SVD costs O(N D bits) where
        # the D x D covariance eigendecomposition would cost O(D^3): 4096^3 is minutes on a CPU.
        if 2 * bits < min(xc.shape):
            _, _, pca = torch.svd_lowrank(xc, q=min(bits + 16, min(xc.shape)), niter=3)
            pca = pca[:, :bits]
        else:
            pca = torch.linalg.svd(xc, full_matrices=False).Vh[:bits].T
        v = xc @ pca
        g = torch.Generator().manual_seed(seed)
        r, _ = torch.linalg.qr(torch.randn(bits, bits, generator=g))
        r = r.to(x.device)
        for _ in range(iterations):  # alternate: B = sign(VR); R = argmin |B - VR| (Procrustes)
            b = torch.sign(v @ r)
            b[b == 0] = 1
            u, _, wt = torch.linalg.svd(v.T @ b)
            r = u @ wt
        return cls(mean=mean, projection=(pca @ r).contiguous())

    def encode(self, x: Tensor, chunk: int = 65536) -> Tensor:
        """Packed codes ``[N, ceil(bits / 64)]`` (in chunks: the unpacked bits are 64x larger)."""
        mean, proj = self.mean.to(x.device), self.projection.to(x.device)
        return torch.cat([pack_bits((x[s : s + chunk].float() - mean) @ proj > 0) for s in range(0, max(1, x.shape[0]), chunk)])


# --------------------------------------------------------------------------- the index


@dataclass
class SearchResult:
    """``indices``/``distances`` ``[Q, k]``: Euclidean (exact or re-ranked) or Hamming (binary)."""

    indices: Tensor
    distances: Tensor
    seconds: float = 0.0


@dataclass
class FeatureIndex:
    """One layer's activations (``layer``; fc7 in the paper) of a dataset with its paths and
    labels, searchable exactly or by code."""

    features: Tensor  # float32 [N, D] (float16 on disk when in range)
    labels: Tensor  # int64 [N]
    paths: list[str]
    classes: list[str]
    class_names: list[str]
    layer: str = "fc7"
    positions: Tensor | None = None  # int64 [N]: index of each entry in the source dataset
    info: dict[str, Any] = field(default_factory=dict)
    itq: ITQ | None = None
    codes: Tensor | None = None  # int64 [N, W]
    _sq_norms: Tensor | None = field(default=None, repr=False)
    _signs: Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device | str) -> FeatureIndex:
        """Move the searchable tensors (features, labels, codes, projection) to ``device``."""
        self.features, self.labels = self.features.to(device), self.labels.to(device)
        if self.codes is not None and self.itq is not None:
            self.codes = self.codes.to(device)
            self.itq = ITQ(self.itq.mean.to(device), self.itq.projection.to(device))
        self._sq_norms = self._signs = None
        return self

    # ------------------------------------------------------------------ building

    @classmethod
    @torch.inference_mode()
    def build(
        cls,
        model: nn.Module,
        meta: ModelMeta,
        dataset: Any,
        layer: str | None = None,
        batch_size: int = 128,
        device: torch.device | str | None = None,
        bits: int = 256,
        num_workers: int | None = 0,
        progress: bool = False,
        limit: int | None = None,
    ) -> FeatureIndex:
        """Run the model over ``dataset`` (centre crops) and keep the ``layer`` activations
        (default: the model's ``embedding_layer``, the last row before the logits).

        ``limit``: index at most this many images, evenly spaced over the dataset (so a
        class-ordered dataset keeps every class). ``positions`` records the dataset index
        of each entry.
        """
        layer = model.embedding_layer if layer is None else layer
        base = dataset
        positions = list(range(len(dataset)))
        if limit is not None and limit < len(dataset):
            positions = spaced_indices(len(dataset), limit)
            dataset = torch.utils.data.Subset(dataset, positions)
        predictor = Predictor(model, meta, 1, device)
        feats, labels = [], []
        batches = iter_batches(dataset, batch_size, num_workers)
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, total=math.ceil(len(dataset) / batch_size), unit="batch", desc="index")
        for images, y in batches:
            feats.append(predictor.features(images, layer).cpu())
            labels.append(y)
        if not feats:
            raise EvaluationError("the dataset has no images to index")
        path_of = getattr(base, "path_of", None)
        paths = [str(path_of(i)) if path_of else f"#{i}" for i in positions]
        index = cls(
            features=torch.cat(feats),
            labels=torch.cat(labels),
            paths=paths,
            classes=list(base.classes),
            class_names=list(getattr(base, "class_names", base.classes)),
            layer=layer,
            positions=torch.tensor(positions, dtype=torch.int64),
            info={
                "model": meta.model,
                "model_classes": meta.num_classes,
                "image_size": meta.image_size,
                "weights_sha256": weights_fingerprint(model),
            },
        )
        if bits:
            index.fit_codes(bits)
        return index

    def fit_codes(self, bits: int = 256, iterations: int = 30, sample: int = 5000) -> None:
        """Learn the ITQ projection on (a random sample of) the indexed features, encode them all."""
        data = self.features
        if data.shape[0] > sample:
            g = torch.Generator().manual_seed(0)
            data = data[torch.randperm(data.shape[0], generator=g)[:sample].to(data.device)]
        self.itq = ITQ.fit(data, bits, iterations)
        self.codes = self.itq.encode(self.features)
        self._signs = None

    # ------------------------------------------------------------------ searching

    def search(
        self,
        features: Tensor,
        k: int = 6,
        binary: bool = False,
        rerank: int = 0,
        exclude_self: bool = False,
        method: str = "matmul",
    ) -> SearchResult:
        """The ``k`` nearest indexed images of each query ``[Q, D]`` (or ``[D]``).

        ``binary``: rank by Hamming distance of the ITQ codes; with ``rerank`` = r > 0 the
        ``r * k`` best by code are re-ranked by exact Euclidean distance.
        ``exclude_self``: drop an exact match (distance 0), for queries taken from the index.
        ``method`` (binary): ``"matmul"`` (+-1 codes, one BLAS call; keeps an unpacked copy of
        ``bits`` floats per image, still ``D / bits`` x smaller than the features) or
        ``"popcount"`` (XOR + popcount on the packed words only).
        """
        q = features.float().to(self.features.device)
        q = q.reshape(1, -1) if q.dim() == 1 else q
        if q.shape[1] != self.features.shape[1]:
            raise EvaluationError(f"query has {q.shape[1]} dimensions, the index {self.features.shape[1]}")
        extra = 1 if exclude_self else 0
        k = min(k, len(self) - extra)
        if k < 1:
            raise EvaluationError(f"cannot return neighbours from an index of {len(self)} images")
        start = time.perf_counter()
        if binary:
            if self.codes is None or self.itq is None:
                raise EvaluationError("this index has no binary codes; build it with bits > 0")
            packed = self.itq.encode(q)
            if method == "matmul":
                if self._signs is None:
                    self._signs = unpack_signs(self.codes, self.itq.bits)
                d = hamming_matmul(unpack_signs(packed, self.itq.bits), self._signs)
            elif method == "popcount":
                d = hamming(packed, self.codes)
            else:
                raise ValueError(f"unknown Hamming method {method!r}: 'matmul' or 'popcount'")
            if rerank > 0:
                m = min(len(self), rerank * (k + extra))
                cand = d.topk(m, dim=1, largest=False).indices  # [Q, m]
                # |x|^2 - 2 x.q + |q|^2 over the gathered candidates: one batched matmul, no
                # [Q, m, D] difference tensor.
                if self._sq_norms is None:
                    self._sq_norms = (self.features**2).sum(1)
                dots = torch.bmm(self.features[cand], q.unsqueeze(-1)).squeeze(-1)  # [Q, m]
                exact = self._sq_norms[cand] - 2 * dots + (q**2).sum(1, keepdim=True)
                dist, pos = exact.topk(min(k + extra, m), dim=1, largest=False)
                idx = cand.gather(1, pos)
                dist = dist.clamp_min(0).sqrt()
            else:
                dist, idx = d.topk(min(k + extra, len(self)), dim=1, largest=False)
        else:
            d = self._sq_dist(q)
            dist, idx = d.topk(min(k + extra, len(self)), dim=1, largest=False)
            dist = dist.clamp_min(0).sqrt()
        if exclude_self:  # drop the first zero-distance hit (the query itself), else the last
            # Euclidean distances come from |q|^2 - 2 q.x + |x|^2, so "zero" is relative.
            tol = 0.5 if binary and rerank == 0 else 1e-3 * q.norm(dim=1, keepdim=True).to(dist.device) + 1e-6
            is_self = dist <= tol
            drop = is_self & (is_self.cumsum(1) == 1)
            drop[~is_self.any(1), -1] = True
            idx, dist = idx[~drop].view(q.shape[0], -1), dist[~drop].view(q.shape[0], -1)
        return SearchResult(idx, dist.float(), time.perf_counter() - start)

    def _sq_dist(self, q: Tensor) -> Tensor:
        if self._sq_norms is None:
            self._sq_norms = (self.features**2).sum(1)
        return (q**2).sum(1, keepdim=True) - 2.0 * q @ self.features.T + self._sq_norms.unsqueeze(0)

    # ------------------------------------------------------------------ disk

    def save(self, directory: str | Path) -> Path:
        """Write ``features.safetensors`` + ``index.json`` (each atomically)."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # float16 halves the file; activations beyond its range (65504) keep float32.
        half = self.features.half()
        stored = half if bool(torch.isfinite(half).all()) else self.features.float()
        tensors = {"features": stored.cpu().contiguous(), "labels": self.labels.cpu().contiguous()}
        if self.positions is not None:
            tensors["positions"] = self.positions.cpu().contiguous()
        if self.itq is not None and self.codes is not None:
            tensors |= {
                "itq.mean": self.itq.mean.cpu().contiguous(),
                "itq.projection": self.itq.projection.cpu().contiguous(),
                "codes": self.codes.cpu().contiguous(),
            }
        atomic_write_bytes(directory / FEATURES_FILE, save(tensors))
        doc = {
            "version": INDEX_VERSION,
            "layer": self.layer,
            "count": len(self),
            "dim": self.features.shape[1],
            "classes": self.classes,
            "class_names": self.class_names,
            "paths": self.paths,
            "info": self.info,
        }
        atomic_write_bytes(directory / INDEX_FILE, json.dumps(doc).encode())
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> FeatureIndex:
        """Read an index written by :meth:`save`; raises :class:`IndexFormatError` if it is not valid."""
        directory = Path(directory)
        doc, tensors = read_stored(directory, INDEX_FILE, FEATURES_FILE, "feature index")
        try:
            if doc.get("version") != INDEX_VERSION:
                raise ValueError(f"unsupported version {doc.get('version')}")
            features, labels = tensors["features"].float(), tensors["labels"].long()
            n = features.shape[0]
            if features.dim() != 2 or labels.shape != (n,) or len(doc["paths"]) != n:
                raise ValueError("features, labels and paths disagree in length")
            if n and (labels.min() < 0 or labels.max() >= len(doc["classes"])):
                raise ValueError("labels out of range")
            positions = tensors.get("positions")
            if positions is not None and positions.shape != (n,):
                raise ValueError("positions do not match the features")
            itq = codes = None
            if "codes" in tensors:
                itq = ITQ(tensors["itq.mean"].float(), tensors["itq.projection"].float())
                codes = tensors["codes"].long()
                if codes.shape[0] != n or codes.shape[1] != math.ceil(itq.bits / 64):
                    raise ValueError("binary codes do not match the features")
            return cls(
                features=features,
                labels=labels,
                paths=[str(p) for p in doc["paths"]],
                classes=[str(c) for c in doc["classes"]],
                class_names=[str(c) for c in doc.get("class_names", doc["classes"])],
                layer=str(doc.get("layer", "fc7")),
                positions=None if positions is None else positions.long(),
                info=dict(doc.get("info", {})),
                itq=itq,
                codes=codes,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise IndexFormatError(f"feature index in {directory} is inconsistent: {exc}") from None


def read_stored(directory: Path, json_name: str, tensors_name: str, what: str) -> tuple[Any, dict[str, Tensor]]:
    """The JSON document and the safetensors tensors of a stored analysis artefact (a feature
    index, the unit atlas), untrusted: any failure to read is an :class:`IndexFormatError`
    naming ``what`` and the directory; checking their content is the caller's."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        doc = json.loads((directory / json_name).read_text(encoding="utf-8"))
        tensors = load_file(str(directory / tensors_name))
    except FileNotFoundError as exc:
        raise IndexFormatError(f"no {what} in {directory}: {Path(exc.filename).name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError) as exc:
        raise IndexFormatError(f"{what} in {directory} is unreadable: {exc}") from None
    return doc, tensors


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights: an index is only valid for the exact weights that built it."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def recall_at_k(approx: Tensor, exact: Tensor) -> float:
    """Mean fraction of the exact top-k found in the approximate top-k (both ``[Q, k]``)."""
    hits = (approx.unsqueeze(2) == exact.unsqueeze(1)).any(1).float()
    return float(hits.mean())
