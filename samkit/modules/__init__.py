"""Generic building blocks; they import neither upstream library."""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

if TYPE_CHECKING:
    from samkit.modules.affinity import (
        AffinityDecoder,
        AffinityDecoderLayer,
        AffinityHead,
        SemanticQueryEmbedding,
        compose_queries,
        semantic_instance_attention_mask,
    )
    from samkit.modules.aggregation import (
        ShallowMaskAggregator,
        mask_text_overlap,
        match_masks_to_text,
        pad_masks,
        point_masks,
        shallow_mask_aggregation,
    )
    from samkit.modules.classifier import (
        MaskPooledClipClassifier,
        OpenVocabularyEnsemble,
        VisionLanguageClassifier,
        geometric_ensemble,
    )
    from samkit.modules.cost_aggregation import (
        CostAggregator,
        CostEmbedding,
        cost_volume,
        select_top_classes,
        sliding_window_inference,
    )
    from samkit.modules.cost_attention import (
        ClassAggregation,
        GuidedSwinBlock,
        SpatialAggregation,
        linear_attention,
    )
    from samkit.modules.cost_decoder import (
        UpsamplingDecoder,
    )
    from samkit.modules.feature_pyramid import (
        BackboneFPN,
        ResNetFPN,
        TimmFPN,
        TinyFeaturePyramid,
    )
    from samkit.modules.injection import (
        DecoupledMaskInjection,
        HighFrequencyInjection,
        LowFrequencyInjection,
        boundary_encoding,
        resize_masks,
    )
    from samkit.modules.language import (
        LinguisticAttentionAdapter,
        masked_phrase_attention,
    )
    from samkit.modules.merging import (
        PanopticFusion,
        merge_boxes,
        merge_patches,
        normalize_affinity,
        query_candidates,
        select_instances,
    )
    from samkit.modules.patch_encoder import (
        PatchEncoder,
        PostNormSelfAttentionLayer,
        ResidualFFN,
        box_sine_embedding,
        roi_levels,
    )
    from samkit.modules.prompting import (
        MLP,
        PostNormEncoderLayer,
        SemanticSpatialPromptEncoder,
        TanhFusion,
    )
    from samkit.modules.tspp import (
        TextGuidedSparsePointPrompter,
        expected_points,
        grid_points,
        masks_from_labels,
        sample_points,
        tspp_targets,
    )
    from samkit.modules.visual_adapter import (
        VisualAttentionAdapter,
        canvas_boxes,
        clip_patch_tokens,
        letterbox,
        normalize_clip_tokens,
    )

__all__ = [
    "AffinityDecoder",
    "AffinityDecoderLayer",
    "AffinityHead",
    "BackboneFPN",
    "ClassAggregation",
    "CostAggregator",
    "CostEmbedding",
    "DecoupledMaskInjection",
    "GuidedSwinBlock",
    "HighFrequencyInjection",
    "LinguisticAttentionAdapter",
    "LowFrequencyInjection",
    "MLP",
    "MaskPooledClipClassifier",
    "OpenVocabularyEnsemble",
    "PanopticFusion",
    "PatchEncoder",
    "PostNormEncoderLayer",
    "PostNormSelfAttentionLayer",
    "ResNetFPN",
    "ResidualFFN",
    "SemanticQueryEmbedding",
    "SemanticSpatialPromptEncoder",
    "ShallowMaskAggregator",
    "SpatialAggregation",
    "TanhFusion",
    "TextGuidedSparsePointPrompter",
    "TimmFPN",
    "TinyFeaturePyramid",
    "UpsamplingDecoder",
    "VisionLanguageClassifier",
    "VisualAttentionAdapter",
    "boundary_encoding",
    "box_sine_embedding",
    "canvas_boxes",
    "clip_patch_tokens",
    "compose_queries",
    "cost_volume",
    "expected_points",
    "geometric_ensemble",
    "grid_points",
    "letterbox",
    "linear_attention",
    "mask_text_overlap",
    "masked_phrase_attention",
    "masks_from_labels",
    "match_masks_to_text",
    "merge_boxes",
    "merge_patches",
    "normalize_affinity",
    "normalize_clip_tokens",
    "pad_masks",
    "point_masks",
    "query_candidates",
    "resize_masks",
    "roi_levels",
    "sample_points",
    "select_instances",
    "select_top_classes",
    "semantic_instance_attention_mask",
    "shallow_mask_aggregation",
    "sliding_window_inference",
    "tspp_targets",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = attach(
        __name__,
        {
            "affinity": [
                "AffinityDecoder",
                "AffinityDecoderLayer",
                "AffinityHead",
                "SemanticQueryEmbedding",
                "compose_queries",
                "semantic_instance_attention_mask",
            ],
            "aggregation": [
                "ShallowMaskAggregator",
                "mask_text_overlap",
                "match_masks_to_text",
                "pad_masks",
                "point_masks",
                "shallow_mask_aggregation",
            ],
            "classifier": [
                "MaskPooledClipClassifier",
                "OpenVocabularyEnsemble",
                "VisionLanguageClassifier",
                "geometric_ensemble",
            ],
            "cost_aggregation": [
                "CostAggregator",
                "CostEmbedding",
                "cost_volume",
                "select_top_classes",
                "sliding_window_inference",
            ],
            "cost_attention": [
                "ClassAggregation",
                "GuidedSwinBlock",
                "SpatialAggregation",
                "linear_attention",
            ],
            "cost_decoder": [
                "UpsamplingDecoder",
            ],
            "feature_pyramid": [
                "BackboneFPN",
                "ResNetFPN",
                "TimmFPN",
                "TinyFeaturePyramid",
            ],
            "injection": [
                "DecoupledMaskInjection",
                "HighFrequencyInjection",
                "LowFrequencyInjection",
                "boundary_encoding",
                "resize_masks",
            ],
            "language": [
                "LinguisticAttentionAdapter",
                "masked_phrase_attention",
            ],
            "merging": [
                "PanopticFusion",
                "merge_boxes",
                "merge_patches",
                "normalize_affinity",
                "query_candidates",
                "select_instances",
            ],
            "patch_encoder": [
                "PatchEncoder",
                "PostNormSelfAttentionLayer",
                "ResidualFFN",
                "box_sine_embedding",
                "roi_levels",
            ],
            "prompting": [
                "MLP",
                "PostNormEncoderLayer",
                "SemanticSpatialPromptEncoder",
                "TanhFusion",
            ],
            "tspp": [
                "TextGuidedSparsePointPrompter",
                "expected_points",
                "grid_points",
                "masks_from_labels",
                "sample_points",
                "tspp_targets",
            ],
            "visual_adapter": [
                "VisualAttentionAdapter",
                "canvas_boxes",
                "clip_patch_tokens",
                "letterbox",
                "normalize_clip_tokens",
            ],
        },
    )
