"""Pipelines: HFDDPMPipeline (unconditional or class-conditional generation), HFDDPMInpaintPipeline (RePaint) and
AutoencoderPipeline (the first stage of latent diffusion)."""

from .pipeline_autoencoder import AutoencoderPipeline
from .pipeline_hfddpm import HFDDPMPipeline
from .pipeline_hfddpm_inpaint import HFDDPMInpaintPipeline

__all__ = ["AutoencoderPipeline", "HFDDPMInpaintPipeline", "HFDDPMPipeline"]
