"""The DR-GAN networks, one module per concern."""
from drgan.nn.agm import AdaIN
from drgan.nn.discriminator import DiscOutput, MultiScaleDiscriminator, PatchDiscriminator
from drgan.nn.generator import DRGANGenerator, GlobalGenerator, LocalEnhancer, structure_only
from drgan.nn.grade_net import GradeNet
from drgan.nn.layers import set_attention_fp8, set_kernel_impl
from drgan.nn.mapping import MappingNetwork
from drgan.nn.sca import SCA
from drgan.config import ModelConfig


def build_discriminator(cfg: ModelConfig) -> MultiScaleDiscriminator:
    return MultiScaleDiscriminator(cfg.cond_channels, cfg.img_channels, cfg.disc_channels, cfg.num_grades, cfg.disc_scales)


def build_grader(cfg: ModelConfig) -> GradeNet:
    return GradeNet(cfg.num_grades, cfg.grader_width, cfg.img_channels)


__all__ = [
    "AdaIN",
    "DiscOutput",
    "DRGANGenerator",
    "GlobalGenerator",
    "GradeNet",
    "LocalEnhancer",
    "MappingNetwork",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "SCA",
    "build_discriminator",
    "build_grader",
    "set_attention_fp8",
    "set_kernel_impl",
    "structure_only",
]
