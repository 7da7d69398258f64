"""Export to deployment formats: ONNX graphs of SAM and of SSP-SAM's prompt path.

See `docs/export-onnx.md`; needs the `onnx` extra (`pip install "samkit[onnx]"`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from samkit._lazy import attach

if TYPE_CHECKING:
    from samkit.export.onnx import (
        OPSET,
        export_sam_decoder,
        export_sam_encoder,
        export_ssp_sam_prompt,
        run_onnx,
    )

__all__ = [
    "OPSET",
    "export_sam_decoder",
    "export_sam_encoder",
    "export_ssp_sam_prompt",
    "run_onnx",
]

if not TYPE_CHECKING:
    __getattr__, __dir__ = attach(
        __name__,
        {
            "onnx": [
                "OPSET",
                "export_sam_decoder",
                "export_sam_encoder",
                "export_ssp_sam_prompt",
                "run_onnx",
            ],
        },
    )
