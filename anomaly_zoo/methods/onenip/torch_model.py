"""OneNIP and UniAD networks and inference maths (pure torch; training glue in lightning_model.py).

The OneNIP paper (Gao et al., ECCV 2024) as the official code (github.com/gaobb/OneNIP @ e93dec5) implements it:
tests/methods/onenip/test_official_onenip.py checks each module against that code. Token tensors are
(batch, tokens, channels) here (batch_first attention, so PyTorch can use its fused SDPA kernels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from anomaly_zoo.backbones import FeatureExtractor

DECODER_RESIDUALS = ("fixed", "prefix")
#: dynamic: OneNIP's two-way decoder; static: UniAD's query decoder with the prompt as its queries (Tab. 4a);
#: query: UniAD's learned queries, no prompt.
DECODERS = ("dynamic", "static", "query")


class StrideSixteenNeck(nn.Module):
    """Resize every backbone stage to stride 16 (bilinear, align_corners=True as the official MFCN) and concatenate."""

    def __init__(self, backbone: FeatureExtractor) -> None:
        super().__init__()
        self.backbone = backbone
        self.channels = sum(backbone.channels)
        self.memory_format = torch.contiguous_format  # use_memory_format(torch.channels_last): NHWC convolutions

    def use_memory_format(self, memory_format: torch.memory_format) -> StrideSixteenNeck:
        """Weights and inputs in `memory_format` (channels_last: NHWC convolutions for bf16 tensor cores)."""
        self.memory_format = memory_format
        return self.to(memory_format=memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = (images.shape[-2] // 16, images.shape[-1] // 16)
        feats = self.backbone(images.contiguous(memory_format=self.memory_format))
        return torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in feats], dim=1)


def neighbour_mask(h: int, w: int, window: Sequence[int], device=None) -> torch.Tensor:
    """Boolean (hw, hw) attention mask, True = blocked: each token may not attend inside its own h×w window.

    Half-widths are window // 2 (so an even window of 8 blocks 9×9, as in the official code).
    """
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys[None, :]).abs() <= window[0] // 2) & ((xs[:, None] - xs[None, :]).abs() <= window[1] // 2)


def add_feature_jitter(tokens: torch.Tensor, scale: float, probability: float, gen: torch.Generator | None = None):
    """UniAD's feature jitter: noise ~ N(0,1) * (||token|| / C) * scale, applied with `probability`."""
    if scale <= 0 or torch.rand(1, generator=gen).item() > probability:
        return tokens
    norms = tokens.norm(dim=-1, keepdim=True) / tokens.shape[-1]
    noise = (
        torch.randn(tokens.shape, generator=gen, device="cpu").to(tokens)
        if gen is not None
        else torch.randn_like(tokens)
    )
    return tokens + noise * norms * scale


class LearnedPositionEmbedding(nn.Module):
    """Column and row embeddings of dim/2 each, concatenated as [column | row] (the official code's layout, so
    official weights load without permuting the hidden dimension). Initialised U(0, 1) as the official code."""

    def __init__(self, grid: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.row = nn.Embedding(grid[0], dim - dim // 2)
        self.col = nn.Embedding(grid[1], dim // 2)
        nn.init.uniform_(self.row.weight)
        nn.init.uniform_(self.col.weight)

    def forward(self) -> torch.Tensor:
        h, w = self.grid
        cols = self.col.weight[None, :, :].expand(h, w, -1)
        rows = self.row.weight[:, None, :].expand(h, w, -1)
        return torch.cat([cols, rows], dim=-1).reshape(h * w, -1)  # (hw, dim)


@torch.no_grad()
def official_init(module: nn.Module) -> None:
    """The official code's initialiser (xavier_uniform): every Conv/ConvTranspose/Linear weight xavier-uniform with
    a zero bias, BatchNorm to (1, 0). Attention input projections keep PyTorch's own init (also xavier-uniform, zero
    bias), LayerNorms (1, 0), embeddings their own (position U(0, 1), UniAD's queries N(0, 1))."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer; position embedding added to queries and keys."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = _MLP(dim, ffn, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = x + pos
        x = self.norm1(x + self.drop1(self.attn(q, q, x, attn_mask=mask, need_weights=False)[0]))
        return self.norm2(x + self.drop2(self.mlp(x)))


class TwoWayDecoderLayer(nn.Module):
    """SAM-style two-way layer: the prompt stream attends to the image, then the image attends to the prompt.

    `residual="fixed"` adds the image→prompt attention output to the image stream (official code after commit
    a6e80fa); `"prefix"` reproduces the earlier bug (adds the prompt stream's MLP output instead), the variant the
    paper's tables were measured with.
    """

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, residual: str = "fixed") -> None:
        super().__init__()
        if residual not in DECODER_RESIDUALS:
            raise ValueError(f"method.decoder_residual={residual!r} is not one of {DECODER_RESIDUALS}")
        self.residual = residual
        self.prompt_to_image = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.image_to_prompt = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(), nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, prompt, image, pos, mask):
        attn = self.prompt_to_image(prompt + pos, image + pos, image, attn_mask=mask, need_weights=False)[0]
        prompt = self.norm1(prompt + self.drop1(attn))
        mlp_out = self.mlp(prompt)
        prompt = self.norm2(prompt + self.drop2(mlp_out))
        attn = self.image_to_prompt(image + pos, prompt + pos, prompt, attn_mask=mask, need_weights=False)[0]
        image = self.norm3(image + self.drop3(attn if self.residual == "fixed" else mlp_out))
        return prompt, image


class QueryDecoderLayer(nn.Module):
    """UniAD's layer-wise query decoder layer: queries attend to the encoder memory, then to the previous layer's
    output, then an FFN. Queries are the layer's own learned embedding, or the encoded prompt (static prompt)."""

    def __init__(self, tokens: int, dim: int, heads: int, ffn: int, dropout: float, learned: bool = True) -> None:
        super().__init__()
        self.queries = nn.Embedding(tokens, dim) if learned else None
        self.to_memory = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.to_previous = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.mlp = _MLP(dim, ffn, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, previous, memory, pos, mask, prompt=None):
        q = prompt if self.queries is None else self.queries.weight[None].expand(memory.shape[0], -1, -1)
        q = self.norm1(
            q + self.drop1(self.to_memory(q + pos, memory + pos, memory, attn_mask=mask, need_weights=False)[0])
        )
        attn = self.to_previous(q + pos, previous + pos, previous, attn_mask=mask, need_weights=False)[0]
        q = self.norm2(q + self.drop2(attn))
        return self.norm3(q + self.drop3(self.mlp(q)))


class ReconstructionTransformer(nn.Module):
    """Shared by both methods: projections, position embedding, neighbour-masked encoder; the decoder differs.

    decoder="dynamic" (OneNIP): two-way decoder whose prompt stream becomes the reconstruction (+ final
    prompt→image attention and LayerNorm). "static": UniAD's decoder with the encoded prompt as queries.
    "query" (UniAD): layer-wise learned queries, no prompt.
    """

    # Buffers (register_buffer in __init__), declared for the type checker.
    feature_mean: torch.Tensor
    feature_std: torch.Tensor
    mask: torch.Tensor | None

    def __init__(
        self,
        channels: int,
        grid: tuple[int, int],
        decoder: str = "dynamic",
        hidden: int = 256,
        heads: int = 8,
        ffn: int = 1024,
        encoder_layers: int = 4,
        decoder_layers: int = 4,
        dropout: float = 0.1,
        neighbour_window: Sequence[int] | None = None,
        decoder_residual: str = "fixed",
    ) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"method.decoder={decoder!r} is not one of {DECODERS}")
        self.decoder_kind, self.grid = decoder, cast(tuple[int, int], tuple(grid))
        self.input_proj = nn.Linear(channels, hidden)
        self.output_proj = nn.Linear(hidden, channels)
        # Fixed per-channel feature statistics around the two projections (identity until set_feature_statistics):
        # a reparameterisation of the same affine maps, so the function class, the loss and the scores are
        # unchanged. Without it the output projection must grow from xavier scale (output std ~1) to the
        # features' own (std ~5 for EfficientNet stages), which takes Adam thousands of steps at lr 1e-4.
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.pos = LearnedPositionEmbedding(self.grid, hidden)
        self.encoder = nn.ModuleList(EncoderLayer(hidden, heads, ffn, dropout) for _ in range(encoder_layers))
        if decoder == "dynamic":
            self.decoder = nn.ModuleList(
                TwoWayDecoderLayer(hidden, heads, ffn, dropout, decoder_residual) for _ in range(decoder_layers)
            )
            self.final_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
            self.final_drop = nn.Dropout(dropout)  # on the final attention's output, as the official decoder
            self.final_norm = nn.LayerNorm(hidden)
        else:
            n_tokens = self.grid[0] * self.grid[1]
            self.decoder = nn.ModuleList(
                QueryDecoderLayer(n_tokens, hidden, heads, ffn, dropout, learned=decoder == "query")
                for _ in range(decoder_layers)
            )
            self.final_norm = nn.LayerNorm(hidden)
        window = tuple(neighbour_window) if neighbour_window else (self.grid[0] // 2, self.grid[1] // 2)
        self.register_buffer("mask", neighbour_mask(*self.grid, window) if window[0] > 0 else None, persistent=False)
        official_init(self)

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) → (N, hw, C)."""
        if tuple(features.shape[-2:]) != self.grid:
            raise ValueError(
                f"feature grid {tuple(features.shape[-2:])} does not match the model's {self.grid}: OneNIP/UniAD "
                "models only run at the input size they were built for (dataset.image_size)"
            )
        return features.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def set_feature_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and std of the (un-jittered) training features, used around the projections."""
        if mean.shape != self.feature_mean.shape or std.shape != self.feature_std.shape:
            raise ValueError(f"feature statistics must have shape {tuple(self.feature_mean.shape)}")
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-3))  # dead (constant) channels stay finite

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.input_proj((tokens - self.feature_mean) / self.feature_std)
        pos = self.pos()[None]
        for layer in self.encoder:
            x = layer(x, pos, self.mask)
        return x

    def decode(self, image: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
        """Encoded image (and prompt) tokens → reconstructed features (N, hw, C)."""
        pos = self.pos()[None]
        if self.decoder_kind != "query" and prompt is None:
            raise ValueError(f"decoder={self.decoder_kind!r} needs a prompt")
        if self.decoder_kind == "dynamic":
            for layer in self.decoder:
                prompt, image = layer(prompt, image, pos, self.mask)
            attn = self.final_attn(prompt + pos, image + pos, image, need_weights=False)[0]
            out = self.final_norm(prompt + self.final_drop(attn))
        else:
            out = image
            for layer in self.decoder:
                out = layer(out, image, pos, self.mask, prompt)
            out = self.final_norm(out)
        return self.output_proj(out) * self.feature_std + self.feature_mean

    @property
    def uses_prompt(self) -> bool:
        return self.decoder_kind != "query"

    def untokens(self, tokens: torch.Tensor) -> torch.Tensor:
        n, _, c = tokens.shape
        return tokens.transpose(1, 2).reshape(n, c, *self.grid)


# ---------------------------------------------------------------------- inference maths (pure functions of tensors)
def guided_reconstruction(
    transformer: ReconstructionTransformer,
    feats: torch.Tensor,
    prompt_feats: torch.Tensor | None,
    jitter: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """F̂: features (N,C,h,w) [+ prompts (N/r,C,h,w), shared by r consecutive blocks of N/r] → reconstruction.

    Each prompt is encoded once and reused by the streams it guides (clean and pseudo-anomalous copy), as in the
    official code: this saves a third of the encoder's work in training. `jitter` perturbs the tokens (training).
    """
    t = transformer
    tokens = t.tokens(feats)
    if jitter is not None:
        tokens = jitter(tokens)
    n = tokens.shape[0]
    if not t.uses_prompt:
        return t.untokens(t.decode(t.encode(tokens), None))
    assert prompt_feats is not None, "a prompt-guided decoder needs prompt features"
    prompt_tokens = t.tokens(prompt_feats)
    if jitter is not None:
        prompt_tokens = jitter(prompt_tokens)
    encoded = t.encode(torch.cat([tokens, prompt_tokens]))  # one pass: the encoder's weights are shared
    repeats = n // prompt_tokens.shape[0]
    prompt = encoded[n:].repeat(repeats, 1, 1)
    return t.untokens(t.decode(encoded[:n], prompt))


def reconstruction_error_map(feats: torch.Tensor, rec: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """S_rec: the L2 reconstruction error over channels, upsampled to (N, H, W) as the official code."""
    rec_map = (rec - feats).norm(dim=1, keepdim=True)
    return F.interpolate(rec_map, size=size, mode="bilinear", align_corners=True)[:, 0]


def fuse_maps(rec_map: torch.Tensor, refined: torch.Tensor, alpha: float, scale: float) -> torch.Tensor:
    """S = (1 - alpha) S_rec + alpha * c * M̂ (the refiner's probabilities M̂ brought to S_rec's range by c)."""
    return (1 - alpha) * rec_map + alpha * scale * refined


def pooled_max_score(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Image score: max of the `kernel` x `kernel` average-pooled map, (N,)."""
    pooled = F.avg_pool2d(maps[:, None], kernel, stride=1)[:, 0] if kernel > 1 else maps
    return pooled.flatten(1).amax(dim=1)


def choose_prompts(
    feats: torch.Tensor,
    pool_features: torch.Tensor,
    allowed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Index into the pool per image (N,): the most cosine-similar entry, among `allowed` (N, K) where given;
    with `generator`, a uniform random allowed entry instead (the argmax of i.i.d. uniform draws)."""
    pool = F.normalize(pool_features.flatten(1), dim=1)
    sims = F.normalize(feats.flatten(1), dim=1) @ pool.T  # (N, K)
    if generator is not None:
        sims = torch.rand(sims.shape, generator=generator).to(sims)
    if allowed is not None:
        sims = sims.masked_fill(~allowed, float("-inf"))
    return sims.argmax(dim=1)


@torch.no_grad()
def convert_row_col_layout(state: dict[str, torch.Tensor], transformer: ReconstructionTransformer, prefix: str) -> None:
    """In place: weights of a model whose position embedding was [row | col] (anomaly_zoo before the official
    layout) → the same function under [col | row].

    Swapping the two halves of the hidden dimension everywhere is an exact symmetry (LayerNorm and attention are
    equivariant to a consistent permutation), so every tensor that reads the hidden stream gets its input axis
    permuted and every tensor that writes it its output axis; the attention heads' own q/k/v axes stay.
    """
    hidden = transformer.input_proj.out_features
    perm = torch.cat([torch.arange(hidden // 2, hidden), torch.arange(hidden // 2)])

    def permute(key: str, dim: int) -> None:
        if prefix + key in state:
            state[prefix + key] = state[prefix + key].index_select(dim, perm.to(state[prefix + key].device))

    for name, m in transformer.named_modules():
        at = f"{name}." if name else ""
        if isinstance(m, nn.MultiheadAttention):
            permute(at + "in_proj_weight", 1)
            permute(at + "out_proj.weight", 0)
            permute(at + "out_proj.bias", 0)
        elif isinstance(m, nn.LayerNorm):
            permute(at + "weight", 0)
            permute(at + "bias", 0)
        elif isinstance(m, nn.Embedding) and not name.startswith("pos."):
            permute(at + "weight", 1)  # UniAD's learned queries live in the hidden stream
        elif isinstance(m, nn.Linear) and not name.endswith(".out_proj"):
            if m.out_features == hidden and name != "output_proj":
                permute(at + "weight", 0)
                permute(at + "bias", 0)
            if m.in_features == hidden and name != "input_proj":
                permute(at + "weight", 1)


class Refiner(nn.Module):
    """2 × (3×3 conv, BN, ReLU, 2×2 transposed conv) + 1×1 conv on |F − F̂|: an anomaly logit at 4× the token grid."""

    def __init__(self, channels: int, hidden: int = 128) -> None:
        super().__init__()
        blocks = []
        for i in range(2):
            blocks += [
                nn.Conv2d(channels if i == 0 else hidden, hidden, 3, padding=1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.ConvTranspose2d(hidden, hidden, 2, stride=2),
            ]
        self.body = nn.Sequential(*blocks, nn.Conv2d(hidden, 1, 1))
        official_init(self)
        self.memory_format = torch.contiguous_format

    def use_memory_format(self, memory_format: torch.memory_format) -> Refiner:
        """Weights and inputs in `memory_format`, as StrideSixteenNeck.use_memory_format."""
        self.memory_format = memory_format
        return self.to(memory_format=memory_format)

    def forward(self, residual: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """Refiner logits (N, H, W) at `out_size` from |F - F̂| (N, C, h, w)."""
        logits = self.body(residual.contiguous(memory_format=self.memory_format))
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=True)[:, 0]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, doubled: bool = False) -> torch.Tensor:
    """Soft Dice with squared denominators (p = 2), per sample, then mean.

    `doubled=False` is the official DiceLoss: 1 - (Σ p·y + s) / (Σ p² + Σ y² + s); `doubled=True` is the paper's
    Eq. 7 with the usual factor 2 on the overlap.
    """
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    num = (2 if doubled else 1) * (prob * target).sum(1) + smooth
    den = (prob**2).sum(1) + (target**2).sum(1) + smooth
    return (1 - num / den).mean()


class OneNIPModel(nn.Module):
    """The whole inference network as one pure module: `forward(images) -> (maps (N, H, W), scores (N,))`.

    Shares (does not copy) the trained parts of a `method=onenip`/`uniad` LightningModule, which builds it with
    `OneNIP.torch_model()`; the weights stay registered there, so checkpoints keep their keys. Prompts come from the
    pool: the most cosine-similar entry, or one of the entries `allowed` per image (oracle / random selection).
    `scale` is c in S = (1 - alpha) S_rec + alpha * c * M̂.
    """

    pool_features: torch.Tensor

    def __init__(
        self,
        neck: StrideSixteenNeck,
        transformer: ReconstructionTransformer,
        refiner: Refiner | None,
        pool_features: torch.Tensor,
        alpha: float,
        scale: float,
        image_score_pool: int,
    ) -> None:
        super().__init__()
        self.neck, self.transformer, self.refiner = neck, transformer, refiner
        self.register_buffer("pool_features", pool_features)  # the owner's tensor itself, not a copy
        self.alpha, self.scale, self.image_score_pool = alpha, scale, image_score_pool

    def score_maps(self, feats: torch.Tensor, rec: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Fused anomaly maps (N, H, W) at image resolution (S_rec alone without a refiner)."""
        rec_map = reconstruction_error_map(feats, rec, size)
        if self.refiner is None:
            return rec_map
        return fuse_maps(rec_map, torch.sigmoid(self.refiner((rec - feats).abs(), size)), self.alpha, self.scale)

    def predict(
        self, images: torch.Tensor, allowed: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(maps, scores, chosen pool index per image or None without prompts)."""
        feats = self.neck(images)
        chosen = None
        if self.transformer.uses_prompt:
            if self.pool_features.numel() == 0:
                raise RuntimeError("OneNIP has no prompt pool: fit it or load a checkpoint that has one")
            chosen = choose_prompts(feats, self.pool_features, allowed, generator)
        rec = guided_reconstruction(self.transformer, feats, None if chosen is None else self.pool_features[chosen])
        maps = self.score_maps(feats, rec, (images.shape[-2], images.shape[-1]))
        return maps, pooled_max_score(maps, self.image_score_pool), chosen

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps, scores, _ = self.predict(images)
        return maps, scores
