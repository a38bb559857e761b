"""Device-side crop/flip: same distribution as torchvision RandomCrop(32, padding=4) + RandomHorizontalFlip."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from diffaug.train.augment import random_crop_flip

SIZE, PAD, N = 32, 4, 18000


def coded_images(n: int) -> torch.Tensor:
    """Pixel (r, c) holds r+1 in channel 0, c+1 in channel 1 and 255 in channel 2, so the crop offset and
    the flip of every output can be read back from it; a zero pixel can only come from padding."""
    r, c = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    image = torch.stack([r + 1, c + 1, torch.full_like(r, 255)], dim=-1).to(torch.uint8)
    return image.expand(n, SIZE, SIZE, 3).contiguous()


def read_back(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row offset, column offset, flipped) of each augmented coded image, offsets in 0..2*PAD."""
    centre = out[:, 16, 16].long()  # never padding when PAD <= 16
    flipped = out[:, 16, 17, 1].long() < centre[:, 1]
    dy = centre[:, 0] - 1 - 16 + PAD
    dx = centre[:, 1] - 1 - torch.where(flipped, SIZE - 1 - 16, 16) + PAD
    return dy.numpy(), dx.numpy(), flipped.numpy()


def chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.fixture(scope="module")
def augmented():
    images = coded_images(N)
    out = random_crop_flip(images, PAD, True, torch.Generator().manual_seed(0))
    return images, out, read_back(out)


def test_each_output_is_exactly_torchvisions_crop_and_flip_for_its_offsets(augmented):
    images, out, (dy, dx, flipped) = augmented
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(300):
        chw = images[i].permute(2, 0, 1)
        ref = TF.crop(TF.pad(chw, [PAD], fill=0), int(dy[i]), int(dx[i]), SIZE, SIZE)
        if flipped[i]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i].permute(2, 0, 1), ref), f"image {i}: dy={dy[i]} dx={dx[i]} flip={flipped[i]}"


def test_padding_is_zero_and_only_where_the_offset_puts_it(augmented):
    _, out, (dy, dx, _) = augmented
    padded = out[..., 2] != 255
    assert torch.all(out[padded] == 0), "padded pixels must be black (zero), like torchvision's fill=0"
    rows_out = np.abs(dy - PAD)
    cols_out = np.abs(dx - PAD)
    expected = SIZE * SIZE - (SIZE - rows_out) * (SIZE - cols_out)
    assert np.array_equal(padded.sum((1, 2)).numpy(), expected)


def test_offsets_uniform_over_0_to_8_independent_and_flip_rate_half(augmented):
    _, _, (dy, dx, flipped) = augmented
    assert dy.min() == 0 and dy.max() == 2 * PAD and dx.min() == 0 and dx.max() == 2 * PAD
    # chi-square 99.99% quantiles: 31.8 for 8 degrees of freedom, 131 for 80 (the joint 9x9 table)
    assert chi_square(np.bincount(dy, minlength=9)) < 32
    assert chi_square(np.bincount(dx, minlength=9)) < 32
    assert chi_square(np.bincount(dy * 9 + dx, minlength=81)) < 131, "row and column offsets must be independent"
    assert abs(flipped.mean() - 0.5) < 0.02  # 5 standard deviations at N=18000
    for offsets in (dy, dx):  # flipping must not depend on the crop
        assert abs(flipped[offsets < PAD].mean() - flipped[offsets > PAD].mean()) < 0.04


def test_seeded_generator_repeats_and_off_switches_work():
    images = coded_images(64)
    a = random_crop_flip(images, PAD, True, torch.Generator().manual_seed(5))
    b = random_crop_flip(images, PAD, True, torch.Generator().manual_seed(5))
    c = random_crop_flip(images, PAD, True, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_crop_flip(images, 0, False, torch.Generator()), images)
    flipped_only = random_crop_flip(images, 0, True, torch.Generator().manual_seed(0))
    is_flipped = torch.tensor([torch.equal(f, img.flip(1)) for f, img in zip(flipped_only, images)])
    assert torch.all(is_flipped | torch.all((flipped_only == images).flatten(1), dim=1)) and 10 < int(is_flipped.sum()) < 54
    no_flip = read_back(random_crop_flip(coded_images(2000), PAD, False, torch.Generator().manual_seed(1)))
    assert not no_flip[2].any()
