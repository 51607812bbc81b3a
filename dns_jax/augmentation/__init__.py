"""S2VS self-supervised training views (weak / strong) of uint8 clips `[T, H, W, 3]`, their
batch assembly with video-in-video and similarity targets, and the recipe's config. Pure JAX
functions of a PRNG key; see docs/augmentation.md."""
from .config import (
                     GROUPS,
                     LABEL_MODES,
                     RANDAUGMENT_OPS,
                     AugmentationConfigError,
                     default_augmentation_config,
                     validate_augmentation_config,
)
from .mixing import VivParams, apply_viv, video_in_video, viv_matrix, viv_params
from .overlay import OverlayParams, apply_emoji, apply_text, emoji_params, text_params
from .overlay_bank import OverlayBank, build_overlay_bank
from .randaugment import apply_op, rand_augment
from .spatial import crop_box, hflip, random_hflip, random_resized_crop, resized_crop
from .targets import similarity_targets
from .temporal import (
                     TemporalPlan,
                     fast_forward_plan,
                     gather_frames,
                     identity_plan,
                     pause_plan,
                     random_temporal_edit,
                     reverse_plan,
                     shuffle_dropout_plan,
                     slow_motion_plan,
                     window_plan,
)
from .views import augment_batch, augment_views, frame_edits, mix_strong_views, strong_view, weak_view

__all__ = [
    "GROUPS", "LABEL_MODES", "RANDAUGMENT_OPS", "AugmentationConfigError",
    "default_augmentation_config", "validate_augmentation_config",
    "VivParams", "apply_viv", "video_in_video", "viv_matrix", "viv_params",
    "OverlayParams", "apply_emoji", "apply_text", "emoji_params", "text_params",
    "OverlayBank", "build_overlay_bank",
    "apply_op", "rand_augment",
    "crop_box", "hflip", "random_hflip", "random_resized_crop", "resized_crop",
    "similarity_targets",
    "TemporalPlan", "fast_forward_plan", "gather_frames", "identity_plan", "pause_plan",
    "random_temporal_edit", "reverse_plan", "shuffle_dropout_plan", "slow_motion_plan",
    "window_plan",
    "augment_batch", "augment_views", "frame_edits", "mix_strong_views", "strong_view", "weak_view",
]
