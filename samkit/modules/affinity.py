"""SAM-CP's unified affinity decoder: queries score every SAM patch (spec section 3).

Semantic queries (one per stuff class, from CLIP text embeddings) and instance queries (one per
patch, from the encoded patch tokens) go through post-norm decoder layers. Each layer computes
an affinity matrix `A (K x N)` between queries and patches after self-attention and before
cross-attention. Three refinements are switches: dynamic cross-attention (DCA: a query attends
only to the patches its previous affinity selects), affinity refinement (AR: a running sum of
per-layer affinities) and query enhancement (QE: RoI features of the merged box are averaged into
the query).

Axis legend:
    b - images (B)
    k - queries (K)
    n - patches (N)
    g - attention heads
    d - channels per head
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from samkit._checks import check_shape
from samkit.modules.merging import merge_boxes, normalize_affinity
from samkit.modules.patch_encoder import ResidualFFN, _mlp, _size_scale, box_sine_embedding
from samkit.types import AffinityDecoderOutput

__all__ = [
    "AffinityDecoder",
    "AffinityDecoderLayer",
    "AffinityHead",
    "SemanticQueryEmbedding",
    "compose_queries",
    "semantic_instance_attention_mask",
]


def _prior_bias(prior_prob: float) -> float:
    return -math.log((1 - prior_prob) / prior_prob)


def _unblock_full_rows(mask: Tensor) -> Tensor:
    """Unblock every key of rows whose keys are all blocked (keeps softmax finite)."""
    return mask & ~mask.all(-1, keepdim=True)


def semantic_instance_attention_mask(
    num_semantic: int, num_instance: int, *, device: torch.device | None = None
) -> Tensor:
    """Self-attention mask among `[S semantic, N instance]` queries (True = blocked).

    Instance queries cannot see semantic queries; a semantic query sees itself and every instance
    query but no other semantic query. Follows SAM-CP, spec section 3.1.

    Args:
        num_semantic: Number of semantic queries `S`.
        num_instance: Number of instance queries `N`.
        device: Device of the mask.

    Returns:
        Bool mask `(S + N, S + N)`.

    Examples:
        >>> semantic_instance_attention_mask(2, 1).int()
        tensor([[0, 1, 0],
                [1, 0, 0],
                [1, 1, 0]], dtype=torch.int32)
    """
    k = num_semantic + num_instance
    mask = torch.zeros(k, k, dtype=torch.bool, device=device)
    mask[num_semantic:, :num_semantic] = True
    eye = torch.eye(num_semantic, dtype=torch.bool, device=device)
    mask[:num_semantic, :num_semantic] = ~eye
    return mask


class AffinityHead(nn.Module):
    """Affinity logits between queries and patches (SAM-CP, spec section 3.3).

    Two identity-residual FFNs map queries and patches; per-head scaled dot products give
    `(B, G, K, N)`; three 1x1 convolutions over the head axis, each preceded by ReLU, reduce it to
    one map, divided by `exp(logit_scale)` and shifted by a per-patch bias
    `<patch, bias_lang> + bias0` (bias0 from a 0.01 prior).

    Examples:
        >>> head = AffinityHead(dim=16, num_heads=4, ffn_dim=32)
        >>> head(torch.randn(2, 3, 16), torch.randn(2, 5, 16)).shape
        torch.Size([2, 3, 5])
    """

    def __init__(
        self, *, dim: int, num_heads: int = 8, ffn_dim: int = 2048, prior_prob: float = 0.01
    ) -> None:
        """Create the head.

        Args:
            dim: Channel width `D`.
            num_heads: Heads `G`; must divide `dim`.
            ffn_dim: Hidden width of the two FFNs.
            prior_prob: Initial affinity probability that sets `bias0`.
        """
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AffinityHead: num_heads={num_heads} must divide dim={dim}")
        self.num_heads = num_heads
        self.ffn_query = ResidualFFN(dim=dim, hidden_dim=ffn_dim)
        self.ffn_patch = ResidualFFN(dim=dim, hidden_dim=ffn_dim)
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(num_heads, num_heads, 1),
                nn.Conv2d(num_heads, num_heads, 1),
                nn.Conv2d(num_heads, 1, 1),
            ]
        )
        for conv in self.convs:  # mmcv's xavier_init: xavier-normal weights, zero bias
            nn.init.xavier_normal_(conv.weight)  # type: ignore[arg-type]
            nn.init.zeros_(conv.bias)  # type: ignore[arg-type]
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.bias_lang = nn.Parameter(torch.zeros(dim))
        self.bias0 = nn.Parameter(torch.tensor(_prior_bias(prior_prob)))

    def forward(self, queries: Tensor, patches: Tensor) -> Tensor:
        """Compute affinity logits.

        Args:
            queries: Query tokens (content + position) `(B, K, D)`.
            patches: Patch tokens (content + position) `(B, N, D)`.

        Returns:
            Affinity logits `(B, K, N)`.

        Raises:
            ValueError: If `B` or `D` differ.
        """
        s = check_shape(queries, "B K D", name="queries")
        check_shape(patches, "B N D", name="patches", known={"B": s["B"], "D": s["D"]})
        bias = patches @ self.bias_lang + self.bias0  # b n
        q = rearrange(self.ffn_query(queries), "b k (g d) -> b g k d", g=self.num_heads)
        p = rearrange(self.ffn_patch(patches), "b n (g d) -> b g n d", g=self.num_heads)
        x = torch.einsum("bgkd,bgnd->bgkn", q / math.sqrt(q.shape[-1]), p)
        for conv in self.convs:  # 1x1 convs over the head axis, as einsum (works for K or N = 0)
            w = conv.weight[:, :, 0, 0]  # type: ignore[index]
            x = torch.einsum("og,bgkn->bokn", w, torch.relu(x)) + conv.bias[None, :, None, None]  # type: ignore[index]
        return x[:, 0] / self.logit_scale.exp() + bias[:, None, :]


class AffinityDecoderLayer(nn.Module):
    """One SAM-CP decoder layer: self-attention, affinity, cross-attention to patches, FFN.

    `q <- LN1(q + SA)`, `A = AffinityHead(q + p_q, P + p_P)`, `q <- LN0(q + CA(q, P))`,
    `q <- LN2(FFN(q))` (spec section 3.2). A query whose cross-attention blocks every patch (an
    image without patches in a batch with patches) gets no cross-attention update, exactly as it
    would alone; other fully blocked rows (padded queries only) are unblocked so they never
    produce NaNs.

    Examples:
        >>> layer = AffinityDecoderLayer(dim=16, num_heads=4, ffn_dim=32)
        >>> q, a = layer(torch.randn(1, 3, 16), torch.randn(1, 3, 16), torch.randn(1, 4, 16),
        ...              torch.randn(1, 4, 16))
        >>> q.shape, a.shape
        (torch.Size([1, 3, 16]), torch.Size([1, 3, 4]))
    """

    def __init__(self, *, dim: int, num_heads: int = 8, ffn_dim: int = 2048) -> None:
        """Create the layer.

        Args:
            dim: Channel width `D`.
            num_heads: Attention (and affinity) heads.
            ffn_dim: FFN hidden width (also used by the affinity head).
        """
        super().__init__()
        self.num_heads = num_heads
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.affinity = AffinityHead(dim=dim, num_heads=num_heads, ffn_dim=ffn_dim)
        self.ffn = ResidualFFN(dim=dim, hidden_dim=ffn_dim)
        self.norm_self = nn.LayerNorm(dim)
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_ffn = nn.LayerNorm(dim)

    def forward(
        self,
        query: Tensor,
        query_pos: Tensor,
        patches: Tensor,
        patch_pos: Tensor,
        *,
        query_padding_mask: Tensor | None = None,
        patch_padding_mask: Tensor | None = None,
        self_attn_mask: Tensor | None = None,
        cross_attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run the layer.

        Args:
            query: Query content `(B, K, D)`.
            query_pos: Query positions `(B, K, D)`.
            patches: Patch tokens `(B, N, D)`.
            patch_pos: Patch positions `(B, N, D)`.
            query_padding_mask: `(B, K)` bool, True at padded queries.
            patch_padding_mask: `(B, N)` bool, True at padded patches.
            self_attn_mask: `(K, K)` bool, True = blocked.
            cross_attn_mask: `(B, K, N)` bool, True = blocked (dynamic cross-attention).

        Returns:
            `(query (B, K, D), affinity logits (B, K, N))`.
        """
        s = check_shape(query, "B K D", name="query")
        check_shape(query_pos, "B K D", name="query_pos", known=s)
        check_shape(patches, "B N D", name="patches", known={"B": s["B"], "D": s["D"]})
        b, k, n = s["B"], s["K"], patches.shape[1]
        qp = query + query_pos
        sa_mask = torch.zeros(b, k, k, dtype=torch.bool, device=query.device)
        if self_attn_mask is not None:
            sa_mask = sa_mask | self_attn_mask
        if query_padding_mask is not None:
            sa_mask = sa_mask | query_padding_mask[:, None, :]
        sa_mask = repeat(_unblock_full_rows(sa_mask), "b k j -> (b g) k j", g=self.num_heads)
        query = self.norm_self(
            query + self.self_attn(qp, qp, query, attn_mask=sa_mask, need_weights=False)[0]
        )
        qp = query + query_pos
        pp = patches + patch_pos
        affinity = self.affinity(qp, pp)
        if n > 0:
            ca_mask = torch.zeros(b, k, n, dtype=torch.bool, device=query.device)
            if cross_attn_mask is not None:
                ca_mask = ca_mask | cross_attn_mask
            if patch_padding_mask is not None:
                ca_mask = ca_mask | patch_padding_mask[:, None, :]
            no_key = ca_mask.all(-1, keepdim=True)  # b k 1
            ca_mask = repeat(_unblock_full_rows(ca_mask), "b k n -> (b g) k n", g=self.num_heads)
            attended = self.cross_attn(qp, pp, patches, attn_mask=ca_mask, need_weights=False)[0]
            query = query + attended.masked_fill(no_key, 0.0)
        query = self.norm_cross(query)
        return self.norm_ffn(self.ffn(query)), affinity


class SemanticQueryEmbedding(nn.Module):
    """Semantic queries from class text embeddings: `LN(Linear(E))` and `sigmoid(Linear(E))` boxes.

    Follows SAM-CP, spec section 3.1 (`semantic_fc`, `semantic_norm`, `semantic_reference_fc`).

    Examples:
        >>> q, ref = SemanticQueryEmbedding(text_dim=8, dim=16)(torch.randn(5, 8))
        >>> q.shape, ref.shape
        (torch.Size([5, 16]), torch.Size([5, 4]))
    """

    def __init__(self, *, text_dim: int, dim: int) -> None:
        """Create the embedding.

        Args:
            text_dim: Width of the text embeddings.
            dim: Query width `D`.
        """
        super().__init__()
        self.fc = nn.Linear(text_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.reference = nn.Linear(text_dim, 4)

    def forward(self, text: Tensor) -> tuple[Tensor, Tensor]:
        """Map text embeddings `(S, C)` to `(queries (S, D), reference cxcywh boxes (S, 4))`."""
        check_shape(text, "S C", name="text")
        return self.norm(self.fc(text)), self.reference(text).sigmoid()


class AffinityDecoder(nn.Module):
    """Stack of `AffinityDecoderLayer`s with SAM-CP's DCA, AR and QE refinements.

    Layer 0 takes query positions from the initial reference boxes; later layers from the merged
    box (union of the patches the previous affinity selects), detached. With DCA a query
    cross-attends only to patches whose normalised previous affinity is >= 0.5; with AR the
    affinity of layer `l` is the sum of the per-layer affinities up to `l`; with QE (needs a
    `query_enhancer`) the query is averaged with the RoI embedding of its merged box. Follows
    SAM-CP, spec section 3.4. Boxes are normalised by each image's own size, and a query that
    selects no patch gets the whole image `(0, 0, 1, 1)`; padded patches are never selected and
    padded queries are never attended to, so a valid query's outputs do not depend on the other
    images of the batch. Deviation: the reference normalises by the padded canvas (valid ratios)
    and includes padded patches' zero boxes in merged boxes; both are identical for one image.

    Examples:
        >>> dec = AffinityDecoder(dim=16, num_heads=4, ffn_dim=32, num_layers=2)
        >>> out = dec(torch.randn(1, 5, 16), torch.rand(1, 5, 4), torch.randn(1, 3, 16),
        ...           torch.randn(1, 3, 16), torch.rand(1, 3, 4), num_semantic=2)
        >>> out.affinities.shape, out.hidden_states.shape, out.boxes.shape
        (torch.Size([2, 1, 5, 3]), torch.Size([2, 1, 5, 16]), torch.Size([3, 1, 5, 4]))
    """

    def __init__(
        self,
        *,
        dim: int = 256,
        num_layers: int = 6,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dynamic_cross_attention: bool = True,
        affinity_refinement: bool = True,
        query_enhancement: bool = False,
    ) -> None:
        """Create the decoder.

        Args:
            dim: Channel width `D`.
            num_layers: Number of decoder layers `L`.
            num_heads: Attention heads.
            ffn_dim: FFN hidden width.
            dynamic_cross_attention: DCA switch (on in the released config).
            affinity_refinement: AR switch (on in the released config).
            query_enhancement: QE switch (off in the released config).
        """
        super().__init__()
        self.layers = nn.ModuleList(
            [
                AffinityDecoderLayer(dim=dim, num_heads=num_heads, ffn_dim=ffn_dim)
                for _ in range(num_layers)
            ]
        )
        self.ref_point_head = _mlp(4 * (dim // 2), dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dim = dim
        self.dynamic_cross_attention = dynamic_cross_attention
        self.affinity_refinement = affinity_refinement
        self.query_enhancement = query_enhancement

    def forward(
        self,
        queries: Tensor,
        query_boxes: Tensor,
        patches: Tensor,
        patch_pos: Tensor,
        patch_boxes: Tensor,
        *,
        num_semantic: int,
        patch_padding_mask: Tensor | None = None,
        query_enhancer: Callable[[Tensor], Tensor] | None = None,
    ) -> AffinityDecoderOutput:
        """Decode.

        Args:
            queries: Initial queries `[S semantic, N instance]` `(B, K, D)`.
            query_boxes: Initial reference boxes `(B, K, 4)`, normalised `(cx, cy, w, h)`.
            patches: Encoded patch tokens `(B, N, D)`.
            patch_pos: Patch positions `(B, N, D)`.
            patch_boxes: Patch boxes `(B, N, 4)`, `(x0, y0, x1, y1)` normalised by the image size.
            num_semantic: Number of semantic queries `S` at the front of `queries`.
            patch_padding_mask: `(B, N)` bool, True at padded patches; instance query `S + j` is
                padded when patch `j` is.
            query_enhancer: Maps normalised `(x0, y0, x1, y1)` boxes `(B, K, 4)` to `(B, K, D)`
                RoI embeddings; used when `query_enhancement` is on.

        Returns:
            An `AffinityDecoderOutput`.

        Raises:
            ValueError: On inconsistent shapes.
        """
        s = check_shape(queries, "B K D", name="queries")
        check_shape(query_boxes, "B K 4", name="query_boxes", known=s)
        p = check_shape(patches, "B N D", name="patches", known={"B": s["B"], "D": s["D"]})
        check_shape(patch_boxes, "B N 4", name="patch_boxes", known=p)
        k, n = s["K"], p["N"]
        query_padding = None
        if patch_padding_mask is not None:
            check_shape(patch_padding_mask, "B N", name="patch_padding_mask", known=p)
            query_padding = torch.cat(
                [patch_padding_mask.new_zeros(s["B"], num_semantic), patch_padding_mask], 1
            )
            if query_padding.shape[1] != k:
                raise ValueError(
                    f"queries: expected K = num_semantic + N = {query_padding.shape[1]}, got {k}"
                )
        self_mask = semantic_instance_attention_mask(
            num_semantic, k - num_semantic, device=queries.device
        )
        boxes = [query_boxes]
        hidden, affinities = [], []
        total: Tensor | None = None
        cross_mask: Tensor | None = None
        query = queries
        for i, layer in enumerate(self.layers):
            query_pos = self.ref_point_head(box_sine_embedding(boxes[-1], num_feats=self.dim // 2))
            if i > 0 and self.query_enhancement and query_enhancer is not None:
                query = (query_enhancer(_cxcywh_to_xyxy(boxes[-1])) + query) / 2
            query, aff = layer(
                query,
                query_pos,
                patches,
                patch_pos,
                query_padding_mask=query_padding,
                patch_padding_mask=patch_padding_mask,
                self_attn_mask=self_mask,
                cross_attn_mask=cross_mask,
            )
            total = aff if total is None or not self.affinity_refinement else total + aff
            affinities.append(total)
            hidden.append(self.norm(query))
            detached = total.detach()
            if self.dynamic_cross_attention and n > 0:
                cross_mask = normalize_affinity(detached, patch_padding_mask) < 0.5
            merged = merge_boxes(detached, patch_boxes, patch_padding_mask)
            boxes.append(_xyxy_to_cxcywh(merged))
        return AffinityDecoderOutput(
            hidden_states=torch.stack(hidden),
            affinities=torch.stack(affinities),
            boxes=torch.stack(boxes),
        )


def compose_queries(
    semantic: Tensor,
    semantic_boxes: Tensor,
    patch_tokens: Tensor,
    patch_boxes: Tensor,
    image_size: tuple[int, int],
    image_sizes: Sequence[tuple[int, int]] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Stack `[S semantic, N instance]` queries and their reference boxes for the decoder.

    Instance query `j` is patch token `j`, its reference the patch box (normalised `cx, cy, w,
    h`); every image shares the semantic queries. Follows SAM-CP, spec section 3.1.

    Args:
        semantic: Semantic queries `(S, D)`.
        semantic_boxes: Their reference boxes `(S, 4)`, normalised `(cx, cy, w, h)`.
        patch_tokens: Encoded patch tokens `(B, N, D)`.
        patch_boxes: Patch boxes `(B, N, 4)`, `(x0, y0, x1, y1)` pixels.
        image_size: `(H, W)` of the images.
        image_sizes: True `(h, w)` of each image when images of different sizes are padded to
            `image_size`; boxes are normalised by each image's own size. Default all
            `image_size`.

    Returns:
        `(queries (B, S + N, D), reference boxes (B, S + N, 4), normalised patch boxes
        (B, N, 4) as (x0, y0, x1, y1))`.

    Examples:
        >>> q, ref, nb = compose_queries(torch.zeros(2, 8), torch.rand(2, 4), torch.zeros(1, 3, 8),
        ...                              torch.tensor([[[0.0, 0, 4, 4]] * 3]), (8, 8))
        >>> q.shape, ref[0, 2].tolist()
        (torch.Size([1, 5, 8]), [0.25, 0.25, 0.5, 0.5])
    """
    s = check_shape(patch_tokens, "B N D", name="patch_tokens")
    check_shape(semantic, "S D", name="semantic", known={"D": s["D"]})
    check_shape(patch_boxes, "B N 4", name="patch_boxes", known=s)
    norm = patch_boxes / _size_scale(patch_boxes, image_size, image_sizes)
    queries = torch.cat([repeat(semantic, "s d -> b s d", b=s["B"]), patch_tokens], 1)
    refs = torch.cat([repeat(semantic_boxes, "s c -> b s c", b=s["B"]), _xyxy_to_cxcywh(norm)], 1)
    return queries, refs, norm


def _xyxy_to_cxcywh(b: Tensor) -> Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)


def _cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
