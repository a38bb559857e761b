"""Our denoising loop: the math of `StableDiffusionPipeline.__call__`, arranged for throughput.

Same as the pipeline (tests/test_generate_parity.py checks the images match, to float32 rounding): the text encoder via
`pipe.encode_prompt`, initial latents from `randn_tensor` with one CPU generator per image scaled by
`init_noise_sigma`, one UNet call per step on [uncond; cond] with `uncond + g * (cond - uncond)`,
`scheduler.step`, `vae.decode(latents / scaling_factor)`, and the uint8 image the pipeline would
hand to PIL, `round(255 * clamp(x / 2 + 0.5))`. The safety checker gets exactly the pipeline's
input: those uint8 images through the pipeline's own feature extractor, on the CPU.

Different, for speed: every distinct prompt is encoded once per run (not per batch); timesteps are
kept on the CPU for the scheduler and copied to the device once per batch for the UNet, so the loop
never waits for the GPU (the stock pipeline's PNDM indexes a CPU table with a GPU timestep at every
step, a sync); no progress bar inside the loop; decode, uint8 conversion and downsampling run on the
device and the images cross to the host once per batch, together with one finiteness flag per
image (NaN/inf latents or pixels are refused, never stored as black images).

Levers (see generate/model.py): `attention` picks the SDPA kernel for the UNet, `compile` wraps the
UNet and the VAE decoder in torch.compile (`compile_mode`, CUDA graphs = reduce-overhead), and
`deep_cache=N` (approximate, opt-in) runs the whole UNet every N steps only (`DeepCache`).

img2img (`run_batch(..., init_images=, strengths=)`): the math of `StableDiffusionImg2ImgPipeline`
from the same loaded components. Each real image is upsampled to the generation resolution
(`upsample`), scaled to [-1, 1] as the pipeline's image processor does, encoded by the VAE and
SAMPLED from its latent distribution with the image's own CPU generator (the pipeline's default,
`retrieve_latents(..., sample_mode="sample")`; not the mean), times `scaling_factor`; then noise from
the same generator is added at the first of the last int(steps * strength) timesteps
(`scheduler.add_noise`), and only those steps run. Images of one batch with different strengths are
denoised as one sub-batch per strength (their timesteps differ).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils.torch_utils import randn_tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

SCHEDULER_CLASSES = {  # name in params.yaml -> diffusers class, built from the model's own config
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


def make_scheduler(pipe, name: str):
    """`default` is the model's own scheduler (PNDM for SD-v1.4); the others use its config."""
    if name == "default":
        return pipe.scheduler
    cls = getattr(diffusers, SCHEDULER_CLASSES[name])
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpmsolver++" else {}
    return cls.from_config(pipe.scheduler.config, **extra)


def to_uint8(decoded: torch.Tensor) -> torch.Tensor:
    """VAE output in [-1, 1] -> uint8 NCHW, the same arithmetic as the pipeline's path to PIL.

    The pipeline denormalises in the VAE's dtype, then (as float32 numpy) multiplies by 255 and
    rounds half to even; torch.round rounds half to even too. Equal inputs give equal bytes.
    """
    return ((decoded * 0.5 + 0.5).clamp(0, 1).float() * 255).round().to(torch.uint8)


def downsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 NCHW -> uint8 NCHW of `size` (H, W): bilinear with antialiasing, on the images' device.

    Agreement with PIL's `Image.resize(size, Image.BILINEAR)` (what the paper used), 512² -> 32²:
    on all 5085 images of cifar10-5k-train.npz upsampled to 512² (PIL bicubic), max |diff| = 1 uint8
    level and mean |diff| = 0.067 levels (6.7% of values off by one); on random smooth images the
    same max, mean 0.05. PIL works in fixed point and rounds to 8 bits between its horizontal and
    vertical passes; torch does not. tests/test_generate_parity.py asserts max <= 1, mean < 0.1.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    x = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def upsample(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 NCHW -> uint8 NCHW of `size`: bicubic, rounded and clamped (img2img's real image at the
    generation resolution; generate.plan.UPSAMPLE_METHOD)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


ATTENTION_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                      "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}


@dataclass
class BatchOutput:
    small: np.ndarray  # uint8 NHWC at the dataset size
    full: np.ndarray | None  # uint8 NHWC at the generation resolution, when asked for
    flagged: list[bool]
    finite: np.ndarray | None = None  # per image: latents and decoded pixels all finite

    @property
    def all_finite(self) -> bool:
        return self.finite is None or bool(self.finite.all())


class DeepCache:
    """DeepCache-style step caching (Ma et al., 2023): approximate, opt-in (diffusion.deep_cache: N).

    On a full step (every N-th, the first included) the whole UNet runs and the input of its last up
    block, the deep features, is kept. On the N - 1 steps after it only the shallow path runs:
    conv_in, the first down block (for fresh skip connections), the last up block on the kept deep
    features, and the output convolutions. Both paths are the UNet's own forward arithmetic, spelled
    out for the SD-v1 UNet (no class/added embeddings, no adapters); tests check that `full` equals
    the UNet's output and that `shallow` on the same step's features does too.
    """

    def __init__(self, unet, interval: int):
        self.unet, self.interval = unet, interval

    def is_full_step(self, i: int) -> bool:
        return i % self.interval == 0

    def _embed(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        context = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=None)
        return emb, context

    @staticmethod
    def _down(block, x, emb, context):
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=x, temb=emb, encoder_hidden_states=context)
        return block(hidden_states=x, temb=emb)

    @staticmethod
    def _up(block, x, emb, skips, context, upsample_size=None):
        if getattr(block, "has_cross_attention", False):
            return block(hidden_states=x, temb=emb, res_hidden_states_tuple=skips, encoder_hidden_states=context,
                         upsample_size=upsample_size)
        return block(hidden_states=x, temb=emb, res_hidden_states_tuple=skips, upsample_size=upsample_size)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        if unet.conv_norm_out is not None:
            x = unet.conv_act(unet.conv_norm_out(x))
        return unet.conv_out(x)

    def full(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(the UNet's output, the deep features: the input of its last up block)."""
        unet = self.unet
        factor = 2 ** unet.num_upsamplers
        odd_size = any(d % factor != 0 for d in sample.shape[-2:])
        emb, context = self._embed(sample, timestep, encoder_hidden_states)
        x = unet.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in unet.down_blocks:
            x, res = self._down(block, x, emb, context)
            skips += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                x = unet.mid_block(x, emb, encoder_hidden_states=context)
            else:
                x = unet.mid_block(x, emb)
        features = x
        for i, block in enumerate(unet.up_blocks):
            final = i == len(unet.up_blocks) - 1
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            if final:
                features = x
            x = self._up(block, x, emb, res, context, skips[-1].shape[2:] if (odd_size and not final) else None)
        return self._out(x), features

    def shallow(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                features: torch.Tensor) -> torch.Tensor:
        """The UNet's output with its deep part replaced by `features` (see the class docstring)."""
        unet = self.unet
        emb, context = self._embed(sample, timestep, encoder_hidden_states)
        x = unet.conv_in(sample)
        _, res = self._down(unet.down_blocks[0], x, emb, context)
        last = unet.up_blocks[-1]
        skips = ((x,) + tuple(res))[:len(last.resnets)]  # the first skip connections feed the last up block
        return self._out(self._up(last, features, emb, skips, context))


class Sampler:
    """Generates batches from (seed, prompt) pairs with a loaded pipeline; see the module docstring."""

    def __init__(self, pipe, *, steps: int, guidance_scale: float, resolution: int, out_size: tuple[int, int],
                 scheduler: str = "default", safety_checker: bool = True, compile: bool = False,
                 compile_mode: str = "default", compile_backend: str = "inductor", attention: str = "auto",
                 deep_cache: int = 0):
        self.pipe = pipe
        self.device = pipe._execution_device
        self.dtype = pipe.unet.dtype
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.out_size = out_size
        self.scheduler = make_scheduler(pipe, scheduler)
        factor = pipe.vae_scale_factor
        self.resolution = resolution
        self.latent_shape = (pipe.unet.config.in_channels, resolution // factor, resolution // factor)
        # The pipeline's rule: guidance only above 1, and never for guidance-distilled UNets.
        self.guided = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
        self.check_safety = safety_checker and pipe.safety_checker is not None
        self.attention = attention
        self.cuda_graphs = compile and compile_mode in ("reduce-overhead", "max-autotune")

        def compiled(fn: Callable) -> Callable:
            if not compile:
                return fn
            if compile_backend != "inductor":  # e.g. "eager": dynamo's tracing alone (CPU path checks)
                return torch.compile(fn, backend=compile_backend)
            return torch.compile(fn, mode=None if compile_mode == "default" else compile_mode)

        self.unet = compiled(pipe.unet)
        self.vae_decode = compiled(pipe.vae.decode)
        self.deep_cache = DeepCache(pipe.unet, deep_cache) if deep_cache else None
        self.unet_full: Callable = compiled(self.deep_cache.full) if self.deep_cache else self.unet
        self.unet_shallow: Callable = compiled(self.deep_cache.shallow) if self.deep_cache else self.unet
        self.features: torch.Tensor | None = None  # DeepCache's deep features from the last full step
        self.prompt_index: dict[str, int] = {}
        self.cond: torch.Tensor | None = None
        self.uncond: torch.Tensor | None = None

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], negative_prompt: str | None, chunk: int = 256) -> None:
        """One text-encoder pass per distinct prompt for the whole run; batches then index the cache."""
        conds, unconds = [], []
        for start in range(0, len(prompts), chunk):
            part = prompts[start:start + chunk]
            cond, uncond = self.pipe.encode_prompt(
                part, self.device, 1, self.guided, [negative_prompt] * len(part) if negative_prompt else None)
            conds.append(cond)
            unconds.append(uncond)
        self.prompt_index = {p: i for i, p in enumerate(prompts)}
        self.cond = torch.cat(conds)
        self.uncond = unconds[0][:1] if self.guided else None  # the same negative prompt for every image

    def initial_latents(self, seeds: list[int]) -> torch.Tensor:
        """One CPU generator per image (as `pipe(generator=[...])` would): batching cannot change them."""
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return randn_tensor((len(seeds), *self.latent_shape), generator=generators, device=self.device, dtype=self.dtype)

    def embeddings(self, prompts: list[str]) -> torch.Tensor:
        # Views of the cache joined on the device: no index tensor crosses from the host.
        assert self.cond is not None, "encode_prompts first"
        cond = torch.cat([self.cond[self.prompt_index[p]][None] for p in prompts])
        return torch.cat([self.uncond.expand(len(prompts), -1, -1), cond]) if self.uncond is not None else cond

    def attention_kernels(self):
        """The SDPA kernel for the UNet's attention (`auto`: PyTorch's own choice per call)."""
        if self.attention == "auto":
            return contextlib.nullcontext()
        return sdpa_kernel([ATTENTION_BACKENDS[self.attention]])

    def unet_step(self, i: int, model_input: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """The noise prediction for step i: the whole UNet, or DeepCache's shallow path on kept features."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if self.deep_cache is None:
            noise = self.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
        elif self.deep_cache.is_full_step(i):
            noise, self.features = self.unet_full(model_input, t, embeds)
            if self.cuda_graphs:  # kept across steps, so out of the graphs' reused memory
                self.features = self.features.clone()
        else:
            noise = self.unet_shallow(model_input, t, embeds, self.features)
        return noise.clone() if self.cuda_graphs else noise  # schedulers keep past outputs; graphs reuse memory

    def img2img_timesteps(self, strength: float) -> torch.Tensor:
        """The last int(steps * strength) timesteps (StableDiffusionImg2ImgPipeline.get_timesteps), the
        scheduler reset and told where they begin."""
        scheduler = self.scheduler
        scheduler.set_timesteps(self.steps, device="cpu")  # also resets multistep state (PNDM, DPM++)
        init_timestep = min(int(self.steps * strength), self.steps)
        t_start = max(self.steps - init_timestep, 0)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        return scheduler.timesteps[t_start * scheduler.order:]

    @torch.no_grad()
    def noised_latents(self, seeds: list[int], images_u8: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """img2img's starting latents: the real images (uint8 NCHW at the generation resolution) encoded,
        their latent distribution sampled with each image's generator, then noised to `timestep` with
        noise from the same generator, in the order StableDiffusionImg2ImgPipeline.prepare_latents draws."""
        vae = self.pipe.vae
        pixels = (images_u8.float() / 255.0 * 2.0 - 1.0).to(vae.dtype)  # the image processor's [-1, 1], float32 first
        parameters = vae.encode(pixels).latent_dist.parameters
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        init = torch.cat([DiagonalGaussianDistribution(parameters[i:i + 1]).sample(generator=g)
                          for i, g in enumerate(generators)]) * vae.config.scaling_factor
        noise = randn_tensor(init.shape, generator=generators, device=self.device, dtype=self.dtype)
        return self.scheduler.add_noise(init.to(self.dtype), noise, timestep.to(self.device).repeat(len(seeds)))

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, embeds: torch.Tensor, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """Text-to-image from initial noise, or (img2img) from noised latents over the given `timesteps`
        (img2img_timesteps: the scheduler is already set, and the latents are not scaled by init_noise_sigma)."""
        scheduler = self.scheduler
        if timesteps is None:
            scheduler.set_timesteps(self.steps, device="cpu")  # also resets multistep state (PNDM, DPM++)
            timesteps = scheduler.timesteps
            latents = latents * scheduler.init_noise_sigma
        unet_timesteps = timesteps.to(self.device)
        with self.attention_kernels():
            for i, t in enumerate(timesteps):
                latents = self.step(i, t, unet_timesteps[i], latents, embeds)
        self.features = None
        return latents

    def step(self, i: int, t: torch.Tensor, t_device: torch.Tensor, latents: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """One denoising step: UNet on [uncond; cond], classifier-free guidance, scheduler update."""
        scheduler = self.scheduler
        model_input = torch.cat([latents] * 2) if self.guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        noise = self.unet_step(i, model_input, t_device, embeds)
        if self.guided:
            noise_uncond, noise_text = noise.chunk(2)
            noise = noise_uncond + self.guidance_scale * (noise_text - noise_uncond)
        return scheduler.step(noise, t, latents, return_dict=False)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [-1, 1] (NCHW, the VAE's dtype)."""
        return self.vae_decode(latents / self.pipe.vae.config.scaling_factor, return_dict=False)[0]

    def safety_input(self, images_u8_cpu: torch.Tensor) -> torch.Tensor:
        """The checker's CLIP input, as `run_safety_checker` makes it from the pipeline's PIL images.

        The same uint8 pixels go through the pipeline's own feature extractor on the CPU (the
        pipeline's device for it too), so the flags are the stock pipeline's flags.
        """
        features = self.pipe.feature_extractor(list(images_u8_cpu), return_tensors="pt")
        return features.pixel_values.to(self.device, self.pipe.text_encoder.dtype)

    @torch.no_grad()
    def safety_flags(self, images_u8_cpu: torch.Tensor) -> list[bool]:
        clip_input = self.safety_input(images_u8_cpu)
        # Images are only blacked out by the checker; we need its flags, so it gets a stand-in.
        _, flags = self.pipe.safety_checker(images=torch.zeros(len(images_u8_cpu), 1), clip_input=clip_input)
        return [bool(f) for f in flags]

    @torch.no_grad()
    def img2img_latents(self, seeds: list[int], prompts: list[str], init_images: np.ndarray,
                        strengths: list[float]) -> torch.Tensor:
        """Denoised latents of an img2img batch: real uint8 NHWC images at the dataset size, one strength
        each; one sub-batch per distinct strength (in order of first appearance), put back in order."""
        real = torch.from_numpy(np.ascontiguousarray(init_images)).to(self.device).permute(0, 3, 1, 2)
        real = upsample(real, (self.resolution, self.resolution))
        out: torch.Tensor | None = None
        for strength in dict.fromkeys(strengths):
            idx = [j for j, s in enumerate(strengths) if s == strength]
            timesteps = self.img2img_timesteps(strength)
            latents = self.noised_latents([seeds[j] for j in idx], real[idx], timesteps[:1])
            latents = self.denoise(latents, self.embeddings([prompts[j] for j in idx]), timesteps)
            if len(idx) == len(seeds):
                return latents
            if out is None:
                out = torch.empty((len(seeds), *latents.shape[1:]), dtype=latents.dtype, device=latents.device)
            out[idx] = latents
        assert out is not None
        return out

    @torch.no_grad()
    def run_batch(self, seeds: list[int], prompts: list[str], *, want_full: bool = False,
                  init_images: np.ndarray | None = None, strengths: list[float] | None = None) -> BatchOutput:
        """A batch of images: text-to-image, or img2img from `init_images` (uint8 NHWC) at `strengths`."""
        n = len(seeds)
        if init_images is not None:
            assert strengths is not None and len(strengths) == len(init_images) == n
            latents = self.img2img_latents(seeds, prompts, init_images, strengths)
        else:
            latents = self.denoise(self.initial_latents(seeds), self.embeddings(prompts))
        decoded = self.decode(latents)
        finite = torch.isfinite(latents).flatten(1).all(1) & torch.isfinite(decoded).flatten(1).all(1)
        full = to_uint8(decoded)
        small = downsample(full, self.out_size).permute(0, 2, 3, 1)
        # The batch's first host sync: the small images and the finiteness flags in one copy.
        packed = torch.cat([small.reshape(-1), finite.to(torch.uint8)]).cpu().numpy()
        small_np, finite_np = packed[:-n].reshape(small.shape), packed[-n:].astype(bool)
        if not finite_np.all():  # garbage: no safety check, no full-size copy; the caller refuses it
            return BatchOutput(small=small_np, full=None, flagged=[False] * n, finite=finite_np)
        full_cpu = full.cpu() if (self.check_safety or want_full) else full
        flagged = self.safety_flags(full_cpu) if self.check_safety else [False] * n
        return BatchOutput(
            small=small_np,
            full=full_cpu.permute(0, 2, 3, 1).numpy() if want_full else None,
            flagged=flagged,
            finite=finite_np,
        )
