"""UniMP image tokenizer: a small VQGAN-style VQ autoencoder that turns an item image into a grid of
discrete code tokens `<img_{c}>` and back, for user-guided image generation (spec §2.2 (vi), §4.5).

Self-contained (torch, transformers, PIL, numpy and the standard library only): `save_pretrained`
copies this file into checkpoints as remote code.
"""

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

# Shape letters: B batch, C channels, H x W image pixels, h x w code grid (h = H / downsample_factor),
# S = h * w codes per image, K codebook size, E code dimension.

_CODE_TOKEN_PATTERN = re.compile(r"<img_(\d+)>|\S+")


class UniMPImageTokenizerConfig(PreTrainedConfig):
    r"""Configuration of [`UniMPImageTokenizer`]: everything needed to rebuild its weights.

    The code grid is derived, not stored: `grid_size = resolution // 2 ** (len(channel_multipliers) - 1)`,
    so the defaults give 64-px images, an 8 x 8 grid and `num_image_codes = 64` tokens per image.

    Args:
        resolution (`int`): side of the square images the tokenizer reads and writes, in pixels.
        num_channels (`int`): image channels (3 for RGB).
        base_channels (`int`): channels of the first (full-resolution) encoder level.
        channel_multipliers (`tuple[int, ...]`): per-level channel multipliers of `base_channels`; every
            level after the first halves the spatial size.
        num_res_blocks (`int`): residual blocks per level.
        norm_num_groups (`int`): GroupNorm groups; must divide every level's channel count.
        use_mid_attention (`bool`): one self-attention block at the code-grid resolution (as in VQGAN).
        codebook_size (`int`): number K of discrete codes (the `<img_{c}>` vocabulary).
        code_dim (`int`): dimension E of each code vector.
        commitment_beta (`float`): weight of the commitment loss ||z_e - sg[z_q]||^2.
        use_ema_codebook (`bool`): update the codebook with exponential moving averages of its assigned
            encoder outputs (True) or by gradient through the codebook loss ||sg[z_e] - z_q||^2 (False).
        codebook_ema_decay (`float`): decay of the EMA codebook statistics.
        codebook_restart_threshold (`float`): a code whose EMA assignment count per batch falls below this
            is re-initialised to a random encoder output of the current batch; 0 disables restarts.
        reconstruction_l1_weight (`float`): weight of the mean absolute pixel error.
        reconstruction_l2_weight (`float`): weight of the mean squared pixel error.
    """

    model_type = "unimp_image_tokenizer"

    resolution: int = 64  # item images at 64 px: an 8 x 8 code grid trains in CPU minutes
    num_channels: int = 3  # RGB
    base_channels: int = 16  # full-resolution convs dominate CPU cost: 16 trains 3.5x faster per step than 32
    channel_multipliers: list[int] | tuple[int, ...] = (1, 2, 4, 4)  # 3 halvings: 64 px -> 8 x 8 grid
    num_res_blocks: int = 1  # VQGAN uses 2; 1 halves the cost at a small quality loss
    norm_num_groups: int = 8  # GroupNorm as in VQGAN (32 there, for 4x wider channels)
    use_mid_attention: bool = True  # 64 positions at the grid: cheap, and gives global context
    codebook_size: int = 512  # half VQGAN's 1024 (spec §1.5): enough for 64-px item images
    code_dim: int = 32  # low-dimensional lookup keeps more codes in use (ViT-VQGAN)
    commitment_beta: float = 0.25  # VQ-VAE / VQGAN default
    use_ema_codebook: bool = True  # EMA codebooks converge in far fewer steps than gradient ones (VQ-VAE-2)
    codebook_ema_decay: float = 0.99  # VQ-VAE-2 default
    codebook_restart_threshold: float = 1.0  # Jukebox's dead-code restart threshold
    reconstruction_l1_weight: float = 1.0  # L1 keeps edges sharper than L2 alone (VQGAN's pixel loss)
    reconstruction_l2_weight: float = 1.0  # L2 is what PSNR measures

    def __post_init__(self, **kwargs):
        self.channel_multipliers = tuple(int(m) for m in self.channel_multipliers)
        self._validate_fields()
        super().__post_init__(**kwargs)

    def _validate_fields(self) -> None:
        positive_ints = ("resolution", "num_channels", "base_channels", "num_res_blocks", "norm_num_groups", "code_dim")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if not isinstance(self.codebook_size, int) or self.codebook_size < 2:
            raise ValueError(f"`codebook_size` must be an integer >= 2, got {self.codebook_size!r}")
        if len(self.channel_multipliers) == 0 or min(self.channel_multipliers) < 1:
            raise ValueError(
                f"`channel_multipliers` must be a non-empty sequence of positive integers, got "
                f"{self.channel_multipliers!r}"
            )
        if self.resolution % self.downsample_factor != 0:
            raise ValueError(
                f"`resolution` ({self.resolution}) must be divisible by the downsample factor "
                f"{self.downsample_factor} = 2 ** (len(channel_multipliers) - 1)"
            )
        for multiplier in self.channel_multipliers:
            if (self.base_channels * multiplier) % self.norm_num_groups != 0:
                raise ValueError(
                    f"`norm_num_groups` ({self.norm_num_groups}) must divide every level's channels "
                    f"base_channels * multiplier; {self.base_channels} * {multiplier} does not"
                )
        if self.commitment_beta < 0:
            raise ValueError(f"`commitment_beta` must be >= 0, got {self.commitment_beta}")
        if not 0.0 < self.codebook_ema_decay < 1.0:
            raise ValueError(f"`codebook_ema_decay` must be in (0, 1), got {self.codebook_ema_decay}")
        if self.codebook_restart_threshold < 0:
            raise ValueError(
                f"`codebook_restart_threshold` must be >= 0 (0 disables restarts), got "
                f"{self.codebook_restart_threshold}"
            )
        if self.reconstruction_l1_weight < 0 or self.reconstruction_l2_weight < 0:
            raise ValueError("`reconstruction_l1_weight` and `reconstruction_l2_weight` must be >= 0")
        if self.reconstruction_l1_weight == 0 and self.reconstruction_l2_weight == 0:
            raise ValueError("set `reconstruction_l1_weight` or `reconstruction_l2_weight` above 0")

    def to_dict(self) -> dict:
        output = super().to_dict()
        # `register_for_auto_class` stores any class whose name contains "Tokenizer" as a (slow, fast) text
        # tokenizer pair, which AutoConfig / AutoModel cannot load; keep the plain "module.Class" string.
        auto_map = output.get("auto_map")
        if isinstance(auto_map, dict):
            output["auto_map"] = {
                key: value[0] if isinstance(value, (list, tuple)) and value and value[0] else value
                for key, value in auto_map.items()
            }
        return output

    @property
    def downsample_factor(self) -> int:
        """Pixels per code along each side: 2 ** (number of levels - 1)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def grid_size(self) -> int:
        """Side h = w of the square code grid."""
        return self.resolution // self.downsample_factor

    @property
    def num_image_codes(self) -> int:
        """Codes (and `<img_{c}>` tokens) per image, S = grid_size ** 2."""
        return self.grid_size**2


@dataclass
class UniMPImageTokenizerOutput(ModelOutput):
    """Output of [`UniMPImageTokenizer.forward`].

    Args:
        loss (`torch.FloatTensor` of shape `()`): reconstruction + commitment + codebook loss.
        reconstruction_loss (`torch.FloatTensor` of shape `()`): weighted L1 + L2 pixel loss.
        commitment_loss (`torch.FloatTensor` of shape `()`): beta * ||z_e - sg[z_q]||^2.
        codebook_loss (`torch.FloatTensor` of shape `()`): ||sg[z_e] - z_q||^2 when the codebook learns by
            gradient; reported detached (and not in `loss`) for an EMA codebook.
        reconstruction (`torch.FloatTensor` of shape `(B, C, H, W)`): decoded images, not clamped.
        codes (`torch.LongTensor` of shape `(B, S)`): code index per grid cell, row-major.
        perplexity (`torch.FloatTensor` of shape `()`): exp(entropy) of the batch's code histogram.
        codebook_usage (`torch.FloatTensor` of shape `()`): fraction of the K codes used in the batch.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    codes: torch.LongTensor | None = None
    perplexity: torch.FloatTensor | None = None
    codebook_usage: torch.FloatTensor | None = None


class UniMPImageTokenizerResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a skip (1x1 conv when the channel count changes); VQGAN's ResnetBlock."""

    def __init__(self, in_channels: int, out_channels: int, norm_num_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_num_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(F.silu(self.norm1(hidden)))
        residual = self.conv2(F.silu(self.norm2(residual)))
        return self.skip(hidden) + residual


class UniMPImageTokenizerAttentionBlock(nn.Module):
    """Single-head self-attention over the grid positions with a residual; VQGAN's AttnBlock."""

    def __init__(self, channels: int, norm_num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = hidden.shape
        query, key, value = self.qkv(self.norm(hidden)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # (B, hw, C)
        attended = F.scaled_dot_product_attention(query, key, value)  # (B, hw, C)
        attended = attended.transpose(1, 2).reshape(batch, channels, height, width)
        return hidden + self.proj(attended)


class UniMPImageTokenizerEncoder(nn.Module):
    """(B, C, H, W) pixels -> (B, E, h, w) continuous code vectors z_e."""

    def __init__(self, config: UniMPImageTokenizerConfig):
        super().__init__()
        groups = config.norm_num_groups
        widths = [config.base_channels * m for m in config.channel_multipliers]
        self.conv_in = nn.Conv2d(config.num_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        in_channels = widths[0]
        for level, width in enumerate(widths):
            for _ in range(config.num_res_blocks):
                layers.append(UniMPImageTokenizerResidualBlock(in_channels, width, groups))
                in_channels = width
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(width, width, 4, stride=2, padding=1))  # halves H and W
        self.down = nn.Sequential(*layers)
        mid: list[nn.Module] = [UniMPImageTokenizerResidualBlock(in_channels, in_channels, groups)]
        if config.use_mid_attention:
            mid.append(UniMPImageTokenizerAttentionBlock(in_channels, groups))
        self.mid = nn.Sequential(*mid)
        self.norm_out = nn.GroupNorm(groups, in_channels)
        self.conv_out = nn.Conv2d(in_channels, config.code_dim, 1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.mid(self.down(self.conv_in(pixel_values)))  # (B, C_last, h, w)
        return self.conv_out(F.silu(self.norm_out(hidden)))  # (B, E, h, w)


class UniMPImageTokenizerDecoder(nn.Module):
    """(B, E, h, w) quantized code vectors z_q -> (B, C, H, W) pixels; the encoder mirrored."""

    def __init__(self, config: UniMPImageTokenizerConfig):
        super().__init__()
        groups = config.norm_num_groups
        widths = [config.base_channels * m for m in config.channel_multipliers]
        self.conv_in = nn.Conv2d(config.code_dim, widths[-1], 3, padding=1)
        mid: list[nn.Module] = [UniMPImageTokenizerResidualBlock(widths[-1], widths[-1], groups)]
        if config.use_mid_attention:
            mid.append(UniMPImageTokenizerAttentionBlock(widths[-1], groups))
        self.mid = nn.Sequential(*mid)
        layers: list[nn.Module] = []
        in_channels = widths[-1]
        for level in reversed(range(len(widths))):
            for _ in range(config.num_res_blocks):
                layers.append(UniMPImageTokenizerResidualBlock(in_channels, widths[level], groups))
                in_channels = widths[level]
            if level > 0:
                layers.append(nn.Upsample(scale_factor=2.0, mode="nearest"))  # doubles H and W
                layers.append(nn.Conv2d(in_channels, in_channels, 3, padding=1))
        self.up = nn.Sequential(*layers)
        self.norm_out = nn.GroupNorm(groups, in_channels)
        self.conv_out = nn.Conv2d(in_channels, config.num_channels, 3, padding=1)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        hidden = self.up(self.mid(self.conv_in(quantized)))  # (B, C_first, H, W)
        return self.conv_out(F.silu(self.norm_out(hidden)))  # (B, C, H, W)


class UniMPImageTokenizerQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer with an EMA or gradient codebook and dead-code restarts.

    Like BatchNorm's running statistics, the EMA buffers and restarts change only in `train()` mode,
    inside `forward`; in `eval()` mode the quantizer is a pure function of its input.
    """

    def __init__(self, config: UniMPImageTokenizerConfig):
        super().__init__()
        self.use_ema_codebook = config.use_ema_codebook
        self.ema_decay = config.codebook_ema_decay
        self.restart_threshold = config.codebook_restart_threshold
        codebook = torch.empty(config.codebook_size, config.code_dim)
        if self.use_ema_codebook:
            self.register_buffer("codebook", codebook)  # (K, E), written by the EMA, not the optimizer
        else:
            self.codebook = nn.Parameter(codebook)  # (K, E)
        # EMA of the per-batch assignment count per code (restarts use it in both modes) and, for the EMA
        # codebook, of the summed assigned vectors. Counts start at 0, so the first training step restarts
        # every unused code from encoder outputs: a data-dependent codebook initialisation.
        self.register_buffer("cluster_size", torch.zeros(config.codebook_size))  # (K,)
        self.register_buffer("embed_sum", torch.zeros(config.codebook_size, config.code_dim))  # (K, E)

    def lookup(self, latents: torch.Tensor) -> torch.LongTensor:
        """Index of the nearest code (squared L2) for each row of `latents` (N, E) -> (N,)."""
        codebook = self.codebook.detach()
        distances = (
            latents.pow(2).sum(1, keepdim=True) - 2 * latents @ codebook.T + codebook.pow(2).sum(1)[None, :]
        )  # (N, K)
        return distances.argmin(dim=1)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, torch.LongTensor, dict[str, torch.Tensor]]:
        """Quantize (B, E, h, w) latents -> straight-through z_q (B, E, h, w), codes (B, h*w) and VQ losses."""
        batch, dim, height, width = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(-1, dim)  # (B*h*w, E), row-major over the grid
        with torch.no_grad():
            codes = self.lookup(flat.detach())  # (B*h*w,)
        quantized = F.embedding(codes, self.codebook)  # (B*h*w, E)
        commitment_loss = F.mse_loss(flat, quantized.detach())
        codebook_loss = F.mse_loss(quantized, flat.detach())
        counts = torch.bincount(codes, minlength=self.codebook.shape[0]).to(flat.dtype)  # (K,)
        if self.training:
            self._update_codebook(flat.detach(), codes, counts)
        probabilities = counts / counts.sum()
        entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-10))).sum()
        quantized = flat + (quantized - flat).detach()  # straight-through estimator: d z_q / d z_e = I
        quantized = quantized.reshape(batch, height, width, dim).permute(0, 3, 1, 2)  # (B, E, h, w)
        stats = {
            "commitment_loss": commitment_loss,
            "codebook_loss": codebook_loss,
            "perplexity": entropy.exp(),
            "codebook_usage": (counts > 0).to(flat.dtype).mean(),
        }
        return quantized, codes.reshape(batch, height * width), stats

    @torch.no_grad()
    def _update_codebook(self, flat: torch.Tensor, codes: torch.LongTensor, counts: torch.Tensor) -> None:
        decay = self.ema_decay
        self.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        if self.use_ema_codebook:
            summed = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat)  # (K, E)
            self.embed_sum.mul_(decay).add_(summed, alpha=1 - decay)
            # Laplace smoothing keeps never-assigned codes from dividing by zero (VQ-VAE-2).
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + 1e-5) / (total + self.cluster_size.numel() * 1e-5) * total
            updated = self.embed_sum / smoothed[:, None]
            used = self.cluster_size > 0
            self.codebook[used] = updated[used]
        if self.restart_threshold > 0:
            dead = (self.cluster_size < self.restart_threshold).nonzero().squeeze(1)  # (num_dead,)
            if dead.numel() > 0:
                # Re-seed dead codes on random current encoder outputs so every code stays reachable (Jukebox).
                picks = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
                self.codebook.data[dead] = flat[picks]
                self.cluster_size[dead] = self.restart_threshold
                self.embed_sum[dead] = flat[picks] * self.restart_threshold


class UniMPImageTokenizerPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading glue shared by the image tokenizer classes."""

    config_class = UniMPImageTokenizerConfig
    base_model_prefix = "image_tokenizer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            # PyTorch's default conv init (the HF default, normal(0.02), stalls a deep conv stack).
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, UniMPImageTokenizerQuantizer):
            size = module.codebook.shape[0]
            init.uniform_(module.codebook, -1.0 / size, 1.0 / size)
            init.zeros_(module.cluster_size)
            init.zeros_(module.embed_sum)


class UniMPImageTokenizer(UniMPImageTokenizerPreTrainedModel):
    """VQ autoencoder mapping (B, 3, H, W) images in [-1, 1] to (B, S) codes and back (spec §2.2 (vi)).

    Codes are read row-major over the h x w grid and rendered as the tokens `<img_{c}>`, which the
    language model generates for user-guided image generation.
    """

    def __init__(self, config: UniMPImageTokenizerConfig):
        super().__init__(config)
        self.encoder = UniMPImageTokenizerEncoder(config)
        self.quantizer = UniMPImageTokenizerQuantizer(config)
        self.decoder = UniMPImageTokenizerDecoder(config)
        self.post_init()

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.resolution
        expected = (self.config.num_channels, size, size)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (B, {expected[0]}, {size}, {size}), got "
                f"{tuple(pixel_values.shape)}; resize images to `config.resolution` (images_to_codes does it)"
            )

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.ndim != 2 or codes.shape[1] != self.config.num_image_codes:
            raise ValueError(f"codes must have shape (B, {self.config.num_image_codes}), got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.config.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.config.codebook_size}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )

    def forward(self, pixel_values: torch.FloatTensor, **kwargs) -> UniMPImageTokenizerOutput:
        """Encode, quantize and decode a batch, returning the training loss and codebook statistics.

        In `train()` mode this also updates the EMA codebook and restarts dead codes.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, C, H, W)`): images in [-1, 1], H = W = resolution.

        Returns:
            [`UniMPImageTokenizerOutput`]: `loss` = reconstruction + commitment (+ codebook loss when the
            codebook learns by gradient), `reconstruction` (B, C, H, W), `codes` (B, S).
        """
        self._check_pixel_values(pixel_values)
        latents = self.encoder(pixel_values)  # (B, E, h, w)
        quantized, codes, stats = self.quantizer(latents)
        reconstruction = self.decoder(quantized)  # (B, C, H, W)
        reconstruction_loss = self.config.reconstruction_l1_weight * F.l1_loss(reconstruction, pixel_values)
        reconstruction_loss = reconstruction_loss + self.config.reconstruction_l2_weight * F.mse_loss(
            reconstruction, pixel_values
        )
        commitment_loss = self.config.commitment_beta * stats["commitment_loss"]
        codebook_loss = stats["codebook_loss"]
        loss = reconstruction_loss + commitment_loss
        if self.config.use_ema_codebook:
            codebook_loss = codebook_loss.detach()  # the EMA moves the codebook; the loss is for logging only
        else:
            loss = loss + codebook_loss
        return UniMPImageTokenizerOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss,
            commitment_loss=commitment_loss,
            codebook_loss=codebook_loss,
            reconstruction=reconstruction,
            codes=codes,
            perplexity=stats["perplexity"],
            codebook_usage=stats["codebook_usage"],
        )

    @torch.no_grad()
    def encode(self, pixel_values: torch.FloatTensor) -> torch.LongTensor:
        """Images to codes, without touching the codebook statistics.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(B, C, H, W)`): images in [-1, 1], H = W = resolution.

        Returns:
            `torch.LongTensor` of shape `(B, S)`: code indices in [0, codebook_size), row-major over the grid.
        """
        self._check_pixel_values(pixel_values)
        latents = self.encoder(pixel_values)  # (B, E, h, w)
        flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # (B*h*w, E)
        return self.quantizer.lookup(flat).reshape(pixel_values.shape[0], -1)

    @torch.no_grad()
    def decode(self, codes: torch.LongTensor) -> torch.FloatTensor:
        """Codes to images.

        Args:
            codes (`torch.LongTensor` of shape `(B, S)`): code indices in [0, codebook_size).

        Returns:
            `torch.FloatTensor` of shape `(B, C, H, W)`: decoded images, nominally in [-1, 1] (not clamped).
        """
        codes = torch.as_tensor(codes, device=self.quantizer.codebook.device)
        self._check_codes(codes)
        grid = self.config.grid_size
        quantized = F.embedding(codes, self.quantizer.codebook)  # (B, S, E)
        quantized = quantized.reshape(codes.shape[0], grid, grid, -1).permute(0, 3, 1, 2)  # (B, E, h, w)
        return self.decoder(quantized)

    def images_to_codes(self, images: Sequence[Image.Image]) -> torch.LongTensor:
        """PIL images (any size and mode) to codes; each is converted to RGB and bicubic-resized to the
        square `resolution` (the aspect ratio is not kept, so no part of the item image is cropped).

        Args:
            images (`list[PIL.Image.Image]`): B images.

        Returns:
            `torch.LongTensor` of shape `(B, S)`.
        """
        if len(images) == 0:
            raise ValueError("images_to_codes needs at least one image")
        pixel_values = torch.stack([convert_image_to_pixel_values(image, self.config.resolution) for image in images])
        return self.encode(pixel_values.to(device=self.device, dtype=self.dtype))

    def codes_to_images(self, codes: torch.LongTensor, size: tuple[int, int] | None = None) -> list[Image.Image]:
        """Codes to RGB PIL images, optionally bicubic-resized to `size` = (width, height).

        Args:
            codes (`torch.LongTensor` of shape `(B, S)`, or `(S,)` for one image).
            size (`tuple[int, int]`, *optional*): output (width, height); default `resolution` square.

        Returns:
            `list[PIL.Image.Image]` of length B.
        """
        codes = torch.as_tensor(codes)
        if codes.ndim == 1:
            codes = codes[None]
        images = [convert_pixel_values_to_image(image) for image in self.decode(codes).float().cpu()]
        if size is not None:
            images = [image.resize(size, Image.Resampling.BICUBIC) for image in images]
        return images

    @staticmethod
    def code_token(code: int) -> str:
        """The text token of one code: `<img_{code}>`."""
        return f"<img_{int(code)}>"

    def codes_to_string(self, codes: torch.LongTensor | Sequence[int]) -> str:
        """One image's codes (S,) to space-separated tokens, e.g. `"<img_3> <img_41> ..."`."""
        codes = torch.as_tensor(codes)
        if codes.ndim != 1:
            raise ValueError(f"codes_to_string takes one image's codes of shape (S,), got {tuple(codes.shape)}")
        self._check_codes(codes[None])
        return " ".join(self.code_token(code) for code in codes.tolist())

    def string_to_codes(self, text: str) -> torch.LongTensor:
        """Inverse of `codes_to_string`: tokens `<img_{c}>` (whitespace between them optional) -> codes (S,).

        Raises:
            ValueError: on any other token (named in the message), a code outside [0, codebook_size), or a
                token count different from S = grid_size ** 2.
        """
        codes = []
        for match in _CODE_TOKEN_PATTERN.finditer(text):
            token = match.group(0)
            digits = match.group(1)
            if digits is None or self.code_token(int(digits)) != token:  # also rejects "<img_007>"
                raise ValueError(f"invalid image code token {token!r} at position {len(codes)}; expected <img_c>")
            if int(digits) >= self.config.codebook_size:
                raise ValueError(
                    f"image code token {token!r} at position {len(codes)} is outside the codebook "
                    f"[0, {self.config.codebook_size})"
                )
            codes.append(int(digits))
        if len(codes) != self.config.num_image_codes:
            raise ValueError(
                f"incomplete image code grid: got {len(codes)} tokens, expected {self.config.num_image_codes} "
                f"({self.config.grid_size} x {self.config.grid_size})"
            )
        return torch.tensor(codes, dtype=torch.long)


def convert_image_to_pixel_values(image: Image.Image, resolution: int) -> torch.FloatTensor:
    """RGB-convert and bicubic-resize a PIL image to a (3, resolution, resolution) tensor in [-1, 1]."""
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def convert_pixel_values_to_image(pixel_values: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [-1, 1] (clamped) to an RGB PIL image."""
    array = ((pixel_values.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), mode="RGB")


__all__ = [
    "UniMPImageTokenizerConfig",
    "UniMPImageTokenizerOutput",
    "UniMPImageTokenizerPreTrainedModel",
    "UniMPImageTokenizer",
    "convert_image_to_pixel_values",
    "convert_pixel_values_to_image",
]
