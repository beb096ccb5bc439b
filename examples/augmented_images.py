"""ResNet-18 training on images augmented on the CPU: the DataLoader decides the speed.

Every sample is a 256x256 uint8 image held in host memory, and every time it
is drawn it goes through a random resized crop to 224x224, a horizontal flip,
brightness/contrast/saturation jitter and normalisation, in plain torch on
the CPU, as an ImageNet input pipeline does.  On a modern GPU the model
trains far faster than one process can augment, so the number of DataLoader
workers and pinned memory decide the throughput; dstune tunes them with the
model's own knobs (precision, channels_last, compile).

    dstune run examples/augmented_images.py --budget 10m

Needs ``torchvision`` (for the model only).
"""

import math

import torch
import torch.nn.functional as F
import torchvision

import dstune

SOURCE, CROP, CLASSES = 256, 224, 100
IMAGES = 512  # distinct images in memory; the epoch draws each several times
EPOCH = 8192
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class AugmentedImages(torch.utils.data.Dataset):
    """Random crops, flips and colour jitter of in-memory images, computed per sample on the CPU."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (IMAGES, 3, SOURCE, SOURCE), dtype=torch.uint8, generator=generator)
        self.labels = torch.randint(0, CLASSES, (IMAGES,), generator=generator)

    def __len__(self) -> int:
        return EPOCH

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index % IMAGES].float().div_(255)
        image = _random_resized_crop(image)
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
        image = _jitter(image)
        return (image - MEAN) / STD, self.labels[index % IMAGES]


def _random_resized_crop(image: torch.Tensor) -> torch.Tensor:
    """A crop of 8-100% of the area with aspect ratio 3/4 to 4/3, resized to CROP (as in Inception's training)."""
    area = SOURCE * SOURCE * float(torch.empty(()).uniform_(0.08, 1.0))
    ratio = math.exp(float(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3))))
    w = min(SOURCE, int(round(math.sqrt(area * ratio))))
    h = min(SOURCE, int(round(math.sqrt(area / ratio))))
    top = int(torch.randint(0, SOURCE - h + 1, ()))
    left = int(torch.randint(0, SOURCE - w + 1, ()))
    crop = image[:, top:top + h, left:left + w].unsqueeze(0)
    return F.interpolate(crop, size=(CROP, CROP), mode="bilinear", antialias=True, align_corners=False)[0]


def _jitter(image: torch.Tensor, strength: float = 0.4) -> torch.Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - strength, 1 + strength]."""
    factors = torch.empty(3).uniform_(1 - strength, 1 + strength)
    image = image * factors[0]
    gray = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
    image = (image - gray.mean()) * factors[1] + gray.mean()
    gray = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)
    image = (image - gray) * factors[2] + gray
    return image.clamp_(0, 1)


@dstune.workload(global_batch_size=256)
def augmented_images(ctx):
    return dstune.Workload(
        model=torchvision.models.resnet18(num_classes=CLASSES),
        optimizer=lambda params, **kw: torch.optim.SGD(params, lr=0.1, momentum=0.9, **kw),
        dataset=AugmentedImages(),
        loss=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]),
    )
