"""Distances between a synthetic and a real image set, on feature arrays (N x D), with no download:
Fréchet distance, KID and its standard error, precision/recall (Kynkaenniemi et al. 2019), per set and per
class, and CLIP similarities from weights in the local cache. docs/worth.md gives each definition.

Pure numpy / torch (no scipy): tr((S_r S_s)^1/2) comes from the eigenvalues of the symmetric S_r^1/2 S_s S_r^1/2
(same spectrum), in float64 (it subtracts large, nearly equal traces). Random subsets use a seeded numpy
Generator: same input, same numbers.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffaug.formats.classifier import ImageClassifier, logits_of

K_NEIGHBOURS = 3        # Kynkaenniemi et al.'s default
KID_SUBSETS = 100       # clean-fid / torch-fidelity defaults
KID_SUBSET_SIZE = 1000
CHUNK = 4096            # rows per block of the pairwise-distance matrices (memory, not results)
CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_PROMPT = "a photo of a {label}"


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (unbiased covariances)."""
    a, b = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    s1, s2 = np.cov(a, rowvar=False).reshape(a.shape[1], -1), np.cov(b, rowvar=False).reshape(b.shape[1], -1)
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # S_r^1/2, negative rounding noise clipped
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum())
    diff = a.mean(0) - b.mean(0)
    return max(float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt), 0.0)


def _kernel_sums(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(sum, trace) of the cubic polynomial kernel matrix between the rows of x and y. Entries in
    float32 (relative error ~1e-7, far below any KID worth reading), accumulated in float64."""
    k = torch.addmm(torch.ones(()), x, y.T, alpha=1.0 / x.shape[1])
    k = k * k * k
    return float(k.sum(dtype=torch.float64)), float(k.diagonal().sum(dtype=torch.float64))


def _mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    m, n = len(x), len(y)
    sxx, txx = _kernel_sums(x, x)
    syy, tyy = _kernel_sums(y, y)
    sxy, _ = _kernel_sums(x, y)
    return (sxx - txx) / (m * (m - 1)) + (syy - tyy) / (n * (n - 1)) - 2 * sxy / (m * n)


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float]:
    """(KID, its standard error): the mean and standard deviation of the unbiased MMD^2 over `subsets`
    random subsets of min(subset_size, len(real), len(fake)) images of each set (drawn without replacement)."""
    a, b = (torch.from_numpy(np.asarray(x, np.float32)) for x in (real, fake))
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = np.array([_mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
                       for _ in range(subsets)])
    return float(values.mean()), float(values.std(ddof=1)) if subsets > 1 else 0.0


def _kth_neighbour_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row (the 1st smallest is the row itself)."""
    return torch.cat([torch.cdist(x[i:i + CHUNK], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), CHUNK)])


def _inside_manifold(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each point: whether it lies within radius of at least one centre."""
    return torch.cat([(torch.cdist(points[i:i + CHUNK], centres) <= radii[None, :]).any(dim=1)
                      for i in range(0, len(points), CHUNK)])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = K_NEIGHBOURS) -> tuple[float, float]:
    """(precision, recall) of the fake set against the real one (Kynkaenniemi et al. 2019)."""
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} features per set, got {len(real)} and {len(fake)}")
    r = torch.from_numpy(np.ascontiguousarray(real, dtype=np.float32))
    f = torch.from_numpy(np.ascontiguousarray(fake, dtype=np.float32))
    precision = _inside_manifold(f, r, _kth_neighbour_radii(r, k)).double().mean().item()
    recall = _inside_manifold(r, f, _kth_neighbour_radii(f, k)).double().mean().item()
    return float(precision), float(recall)


def _all_metrics(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    kid_value, kid_se = kid(real, fake)
    precision, recall = precision_recall(real, fake)
    return {"fd": frechet_distance(real, fake), "kid": kid_value, "kid_se": kid_se, "precision": precision,
            "recall": recall, "n_real": int(len(real)), "n_synthetic": int(len(fake))}


def set_quality(real: np.ndarray, real_labels: np.ndarray, fake: np.ndarray, fake_labels: np.ndarray,
                classes: Sequence[str]) -> dict[str, Any]:
    """{"overall": {fd, kid, kid_se, precision, recall, n_real, n_synthetic}, "per_class": {class: {...}}}; a
    class with K_NEIGHBOURS or fewer features on either side gets no entry (its k-NN radii are undefined)."""
    real, real_labels, fake, fake_labels = map(np.asarray, (real, real_labels, fake, fake_labels))
    out: dict[str, Any] = {"overall": _all_metrics(real, fake), "per_class": {}}
    for c, name in enumerate(classes):
        r, f = real[real_labels == c], fake[fake_labels == c]
        if len(r) > K_NEIGHBOURS and len(f) > K_NEIGHBOURS:
            out["per_class"][name] = _all_metrics(r, f)
    return out


def penultimate_features(classifier: ImageClassifier, images: np.ndarray, batch_size: int,
                         device: str | torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of a trained ImageClassifier on uint8 NHWC `images`: the features are the input of
    its last Linear layer. Test-time flipping is off here, so each image gives one feature vector."""
    heads = [m for m in classifier.modules() if isinstance(m, torch.nn.Linear)]
    grabbed: list[torch.Tensor] = []
    hook = heads[-1].register_forward_hook(lambda _m, inp, _out: grabbed.append(inp[0].detach().float().flatten(1).cpu()))
    tta, classifier.tta_hflip = classifier.tta_hflip, False
    try:
        logits = logits_of(classifier, images, batch_size, device)
    finally:
        hook.remove()
        classifier.tta_hflip = tta
    return (torch.cat(grabbed).numpy() if grabbed else np.zeros((0, 0), np.float32)), logits


def load_clip(clip: str | Path, device: str) -> tuple[Any, Any]:
    """(model, processor) of CLIP `clip` (a hub id or a snapshot folder), from the local Hugging Face cache only."""
    from transformers import CLIPModel, CLIPProcessor

    model: Any = CLIPModel.from_pretrained(clip, local_files_only=True)
    return model.to(device).eval(), CLIPProcessor.from_pretrained(clip, local_files_only=True)


def clip_similarities(clip: tuple[Any, Any], images: np.ndarray, labels: np.ndarray, words: list[str], device: str,
                      batch_size: int = 256) -> np.ndarray:
    """float32 cosine similarity of each uint8 NHWC image with the text CLIP_PROMPT of its class's word."""
    model, processor = clip
    # CLIPModel.forward's steps, so the texts are encoded once (get_text_features' return type differs in transformers 4 and 5)
    out = []
    with torch.inference_mode():
        text = processor(text=[CLIP_PROMPT.format(label=w) for w in words], return_tensors="pt", padding=True).to(device)
        text_embeds = torch.nn.functional.normalize(model.text_projection(model.text_model(**text).pooler_output), dim=-1)
        for start in range(0, len(images), batch_size):
            pixels = processor(images=list(images[start:start + batch_size]), return_tensors="pt").to(device)
            image_embeds = torch.nn.functional.normalize(model.visual_projection(model.vision_model(**pixels).pooler_output), dim=-1)
            lab = torch.from_numpy(labels[start:start + batch_size]).to(device)
            out.append((image_embeds * text_embeds[lab]).sum(-1).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)
