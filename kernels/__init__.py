"""The performance-critical ops of DR-GAN, each a public function with `impl='auto'|'ref'|'triton'|'sdpa'`
(spatial attention also 'gluon'; drgan.kernels.dispatch.IMPLS)."""
from drgan.kernels.adain import adain, adain_ref
from drgan.kernels.channel_attention import channel_attention, channel_attention_ref
from drgan.kernels.spatial_attention import spatial_attention, spatial_attention_ref

__all__ = [
    "adain",
    "adain_ref",
    "channel_attention",
    "channel_attention_ref",
    "spatial_attention",
    "spatial_attention_ref",
]
