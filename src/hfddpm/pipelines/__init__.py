"""Pipelines: HFDDPMPipeline (unconditional or class-conditional generation) and HFDDPMInpaintPipeline (RePaint)."""

from .pipeline_hfddpm import HFDDPMPipeline
from .pipeline_hfddpm_inpaint import HFDDPMInpaintPipeline

__all__ = ["HFDDPMInpaintPipeline", "HFDDPMPipeline"]
