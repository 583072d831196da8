"""Pipelines: HFDDPMPipeline, unconditional image generation."""

from .pipeline_hfddpm import HFDDPMPipeline

__all__ = ["HFDDPMPipeline"]
