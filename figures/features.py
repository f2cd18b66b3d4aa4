"""Problem 1 feature figures: PCA and t-SNE of the second-last layer on the validation set.

The features of every validation image are extracted (batched, inference mode) under the run's
snapshots; ``p1_tsne.png`` shows t-SNE at the first, a middle and the last snapshot side by side,
``p1_pca.png`` PCA of the best checkpoint with the last snapshot beside it (one panel when the best
epoch is the last snapshot's), one colour per class throughout. scikit-learn's PCA and TSNE with a
fixed ``random_state``.
"""
from pathlib import Path

import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from torch import nn

from datasets.p1 import NUM_CLASSES, load_folder
from datasets.transforms import Compose, Normalize
from models import load_trained
from figures.plots import plot_embeddings
from figures.runs import first_middle_last
from inference import predict
from utils.metrics import confusion_matrix
from utils.run_folder import RunFolder

SEED = 0


class _FeaturesAndLogits(nn.Module):
    """One pass returning the second-last layer and the logits computed from it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        features = self.model.forward_features(x)
        return features, self.model.forward_head(features)


def extract(checkpoint, images, *, batch_size, device, amp_dtype, progress=None):
    """Second-last-layer features and predicted classes of ``images`` under one checkpoint.

    Returns:
        ``(features (N, D) float32 numpy, predictions (N,) numpy, checkpoint dict)``.
    """
    model, ckpt = load_trained(checkpoint, device, problem="p1")
    transform = Compose([Normalize(ckpt["mean"], ckpt["std"])])
    features, predictions = predict(
        _FeaturesAndLogits(model), images.to(device), batch_size=batch_size, transform=transform,
        device=device, amp_dtype=amp_dtype, keep=lambda out: (out[0].float(), out[1].argmax(1)),
        desc=f"features {Path(checkpoint).name}", progress=progress)
    return features.numpy(), predictions.numpy(), ckpt


def tsne(features):
    """2-D t-SNE (fixed seed; perplexity lowered for tiny sets, where it must be < n)."""
    perplexity = min(30.0, max(1.0, (len(features) - 1) / 3))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=SEED).fit_transform(features)


def _title(ckpt, labels, preds, what):
    """A panel's title; the figure's title names the model."""
    return f"{what}, epoch {ckpt['epoch']}\nvalidation accuracy {float((preds == labels).mean()):.4f}"


def feature_figures(inputs, out, *, batch_size=256, progress=None, embeddings=True):
    """Write ``p1_tsne.png`` and ``p1_pca.png`` of a Problem 1 run into ``out``.

    Args:
        inputs: the run, its snapshots, validation folder and device
            (:func:`figures.runs.open_run`).
        out: the output folder, which exists (the scripts make it: :func:`utils.io.output_folder`).
        batch_size: images per forward pass.
        progress: show progress bars; None: on a terminal only.
        embeddings: draw the two figures; False computes the confusion matrix alone (the report's
            ``--only confusion``).

    Returns:
        ``{"tsne", "pca"}`` (each figure's path and panels; not without ``embeddings``),
        ``feature_dim``, ``confusion`` (the confusion matrix of the best epoch's predictions, or the
        last snapshot's without a ``best.pth``), ``confusion_epoch`` and ``arch``.
    """
    val = load_folder(inputs.val_dir, labeled=True)
    labels = val.labels.numpy()
    common = dict(batch_size=batch_size, device=inputs.device, amp_dtype=inputs.amp_dtype, progress=progress)
    out = Path(out)
    if not embeddings:
        best = inputs.run / "best.pth"
        feats, preds, ckpt = extract(best if best.is_file() else inputs.snapshots[max(inputs.snapshots)], val.images,
                                     **common)
        return {"feature_dim": int(feats.shape[1]), "arch": ckpt["arch"], "confusion_epoch": ckpt["epoch"],
                "confusion": confusion_matrix(torch.from_numpy(preds), val.labels, NUM_CLASSES).numpy()}

    tsne_panels, extracted = [], {}
    for epoch in first_middle_last(inputs.snapshots):
        feats, preds, ckpt = extract(inputs.snapshots[epoch], val.images, **common)
        extracted[epoch] = (feats, preds, ckpt)
        tsne_panels.append((_title(ckpt, labels, preds, "t-SNE"), tsne(feats)))
    arch = extracted[max(extracted)][2]["arch"]
    tsne_meta = plot_embeddings(tsne_panels, labels, out / "p1_tsne.png", num_classes=NUM_CLASSES,
                                suptitle=f"{arch}: t-SNE of the second-last layer on {len(labels)} validation images")

    pca_panels = []
    # best.pth is the first epoch reaching the best val_acc: a snapshot of that epoch (often the
    # last one) already has its features, so the validation set is not run through it again, and
    # when it is the last snapshot the two panels would be one drawn twice.
    records = RunFolder(inputs.run).read_metrics()
    best_epoch = max(records, key=lambda r: r["val_acc"])["epoch"]
    best, last = inputs.run / "best.pth", max(extracted)
    if best_epoch != last and best_epoch in extracted:
        sources = [("best", *extracted[best_epoch])]
    elif best_epoch != last and best.is_file():
        sources = [("best", *extract(best, val.images, **common))]
    else:
        sources = []
    sources.append(("best = last snapshot" if best_epoch == last else "last snapshot", *extracted[last]))
    for what, feats, preds, ckpt in sources:
        pca = PCA(n_components=2, random_state=SEED)
        points = pca.fit_transform(feats)
        axes = tuple(f"PC{i + 1} ({share:.1%} of the variance)" for i, share in enumerate(pca.explained_variance_ratio_))
        pca_panels.append((_title(ckpt, labels, preds, f"PCA ({what})"), points, axes))
    pca_meta = plot_embeddings(pca_panels, labels, out / "p1_pca.png", num_classes=NUM_CLASSES,
                               suptitle=f"{arch}: PCA of the second-last layer on {len(labels)} validation images")
    best_preds = sources[0][2]  # the best epoch when the run has it, else the last snapshot
    matrix = confusion_matrix(torch.from_numpy(best_preds), val.labels, NUM_CLASSES)
    print(f"wrote {tsne_meta['path']} and {pca_meta['path']}")
    return {"tsne": {**tsne_meta, "epochs": sorted(extracted)}, "pca": pca_meta,
            "feature_dim": int(sources[0][1].shape[1]), "confusion": matrix.numpy(),
            "arch": arch, "confusion_epoch": sources[0][3]["epoch"]}
