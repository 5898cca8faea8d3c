"""Abstract component families. Concrete classes live in plugins and are found via the registry."""

from .base import Alias, Component, ModelComponent, component_config
from .constraint import Constraint
from .context import PARAMETER_BLOCKS, ModelContext
from .detector import Detector
from .direct import DirectMethod, DirectResult
from .engine import Engine, EpochOutcome, Problem
from .initializer import InitContext, ObjectInitializer, PositionInitializer, ProbeInitializer
from .loss import LossMetric
from .optimizer import Objective, Optimizer, StepResult
from .propagator import PropagationGeometry, Propagator
from .reader import FileMetadata, PatternSource, Reader
from .regularizer import Regularizer

#: every component family, by kind name
COMPONENT_KINDS = {
    cls.kind: cls
    for cls in (Propagator, LossMetric, Regularizer, Constraint, Optimizer, ProbeInitializer,
                ObjectInitializer, PositionInitializer, Detector, DirectMethod, Engine, Reader)
}

__all__ = [
    "Alias", "COMPONENT_KINDS", "Component", "ModelComponent", "component_config",
    "Constraint", "Detector",
    "DirectMethod", "DirectResult", "Engine", "EpochOutcome", "InitContext", "ModelContext",
    "PARAMETER_BLOCKS", "LossMetric", "Objective", "ObjectInitializer", "Optimizer",
    "FileMetadata", "PatternSource", "PositionInitializer", "Problem", "ProbeInitializer",
    "PropagationGeometry", "Propagator", "Reader", "Regularizer", "StepResult",
]
