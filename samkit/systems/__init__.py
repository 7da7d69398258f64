"""Thin assemblies of the published systems: a config, a builder and the module."""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

if TYPE_CHECKING:
    from samkit.systems._pretrained import (
        PretrainedModule,
        load_pretrained,
        read_pretrained_config,
    )
    from samkit.systems._registry import SYSTEMS, build_system, list_systems
    from samkit.systems.sam_cp import (
        COCO_STUFF_CLASSES,
        COCO_THING_CLASSES,
        SAMCP,
        SAMCPConfig,
        build_sam_cp,
    )
    from samkit.systems.sam_cp_task import SAMCPTask
    from samkit.systems.sam_mi import (
        SAMMI,
        SAMMIConfig,
        build_sam_mi,
    )
    from samkit.systems.sam_mi_task import SAMMITask
    from samkit.systems.ssp_sam import (
        REFERENCE_QUIRKS,
        SSP_SAM_PRESETS,
        SSPSAM,
        SSPSAMConfig,
        SSPSAMOutput,
        build_ssp_sam,
        config_dict,
    )
    from samkit.systems.ssp_sam_official import (
        IGNORED_PREFIXES,
        OFFICIAL_KEY_MAP,
        convert_official_state_dict,
        load_official_ssp_sam,
    )
    from samkit.systems.ssp_sam_task import SSPSAMTask
    from samkit.systems.tasks import TASKS, SystemTask, build_task

__all__ = [
    "COCO_STUFF_CLASSES",
    "COCO_THING_CLASSES",
    "IGNORED_PREFIXES",
    "OFFICIAL_KEY_MAP",
    "PretrainedModule",
    "REFERENCE_QUIRKS",
    "SAMCP",
    "SAMCPConfig",
    "SAMCPTask",
    "SAMMI",
    "SAMMIConfig",
    "SAMMITask",
    "SSPSAM",
    "SSPSAMConfig",
    "SSPSAMOutput",
    "SSPSAMTask",
    "SSP_SAM_PRESETS",
    "SYSTEMS",
    "SystemTask",
    "TASKS",
    "build_sam_cp",
    "build_sam_mi",
    "build_ssp_sam",
    "build_system",
    "build_task",
    "config_dict",
    "convert_official_state_dict",
    "list_systems",
    "load_official_ssp_sam",
    "load_pretrained",
    "read_pretrained_config",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = attach(
        __name__,
        {
            "_pretrained": [
                "PretrainedModule",
                "load_pretrained",
                "read_pretrained_config",
            ],
            "_registry": [
                "SYSTEMS",
                "build_system",
                "list_systems",
            ],
            "sam_cp": [
                "COCO_STUFF_CLASSES",
                "COCO_THING_CLASSES",
                "SAMCP",
                "SAMCPConfig",
                "build_sam_cp",
            ],
            "sam_cp_task": [
                "SAMCPTask",
            ],
            "sam_mi": [
                "SAMMI",
                "SAMMIConfig",
                "build_sam_mi",
            ],
            "sam_mi_task": [
                "SAMMITask",
            ],
            "ssp_sam": [
                "REFERENCE_QUIRKS",
                "SSP_SAM_PRESETS",
                "SSPSAM",
                "SSPSAMConfig",
                "SSPSAMOutput",
                "build_ssp_sam",
                "config_dict",
            ],
            "ssp_sam_official": [
                "IGNORED_PREFIXES",
                "OFFICIAL_KEY_MAP",
                "convert_official_state_dict",
                "load_official_ssp_sam",
            ],
            "ssp_sam_task": [
                "SSPSAMTask",
            ],
            "tasks": [
                "TASKS",
                "SystemTask",
                "build_task",
            ],
        },
    )
