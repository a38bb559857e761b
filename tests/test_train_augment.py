"""Device-side crop/flip: same distribution as torchvision RandomCrop(32, padding=4) + RandomHorizontalFlip."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from diffaug.train.augment import apply_crop_flip, draw_crop_flip

SIZE, PAD, N = 32, 4, 18000



def crop_flip(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """The training step's two calls (loop.py draws, then applies) on one batch."""
    return apply_crop_flip(images, padding, hflip, draw_crop_flip(len(images), padding, hflip, generator))

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
    out = crop_flip(images, PAD, True, torch.Generator().manual_seed(0))
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
    a = crop_flip(images, PAD, True, torch.Generator().manual_seed(5))
    b = crop_flip(images, PAD, True, torch.Generator().manual_seed(5))
    c = crop_flip(images, PAD, True, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(crop_flip(images, 0, False, torch.Generator()), images)
    flipped_only = crop_flip(images, 0, True, torch.Generator().manual_seed(0))
    is_flipped = torch.tensor([torch.equal(f, img.flip(1)) for f, img in zip(flipped_only, images)])
    assert torch.all(is_flipped | torch.all((flipped_only == images).flatten(1), dim=1)) and 10 < int(is_flipped.sum()) < 54
    no_flip = read_back(crop_flip(coded_images(2000), PAD, False, torch.Generator().manual_seed(1)))
    assert not no_flip[2].any()


def test_cutout_sets_exactly_the_clipped_square_to_the_fill():
    from diffaug.train.augment import apply_cutout, draw_cutout

    images = coded_images(3)
    centres = torch.tensor([[16, 16], [0, 0], [31, 5]])
    fill = torch.tensor([7, 8, 9], dtype=torch.uint8)
    out = apply_cutout(images, 8, centres, fill)
    for i, (r, c) in enumerate(centres.tolist()):
        mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        mask[max(r - 4, 0):r + 4, max(c - 4, 0):c + 4] = True  # rows/cols centre-4 .. centre+3, clipped
        assert torch.equal(out[i][mask], fill.expand(int(mask.sum()), 3))
        assert torch.equal(out[i][~mask], images[i][~mask])
    centres = draw_cutout(20000, SIZE, SIZE, torch.Generator().manual_seed(0))
    assert centres.min() == 0 and centres.max() == SIZE - 1
    # chi-square 99.99% quantile for 31 degrees of freedom: about 70
    assert chi_square(np.bincount(centres[:, 0].numpy(), minlength=SIZE)) < 70


def test_trivial_augment_keeps_shape_and_repeats_under_the_same_seed():
    from diffaug.train.augment import trivial_augment

    images = coded_images(40)
    torch.manual_seed(3)
    a = trivial_augment(images, group=8)
    torch.manual_seed(3)
    b = trivial_augment(images, group=8)
    assert a.shape == images.shape and a.dtype == torch.uint8 and torch.equal(a, b)
    changed = [not torch.equal(a[i], images[i]) for i in range(0, 40, 8)]  # one op per group of 8
    assert any(changed)
