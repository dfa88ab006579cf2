"""Compression library: fake quantization, pruning and outlier-mitigation probes.

Every transformation is a context manager that edits a model in place and restores it exactly
on exit; :mod:`sysout.compress.methods` names them for the robustness tables of SPEC section 5.
"""

from .methods import (
    METHODS,
    BaselineRecord,
    Method,
    MitigationThresholds,
    apply_methods,
    get_method,
    list_methods,
    register_method,
)
from .mitigate import (
    GammaResetRecord,
    ResidualRecord,
    clip_residual_activations,
    find_gamma_outliers,
    find_massive_activation_layer,
    gamma_outlier_indices,
    is_layernorm,
    massive_activation_mask,
    reset_layernorm_gamma_outliers,
)
from .prune import (
    PruneRecord,
    build_mask,
    collect_input_norms,
    magnitude_scores,
    parse_pattern,
    pruned,
    semi_structured_mask,
    unstructured_row_mask,
    wanda_scores,
)
from .quantize import (
    QuantConfig,
    QuantRecord,
    absmax_scale,
    fake_quantize,
    name_matches,
    parse_quant_name,
    qmax_for,
    quantized,
)

__all__ = [
    "METHODS",
    "BaselineRecord",
    "GammaResetRecord",
    "Method",
    "MitigationThresholds",
    "PruneRecord",
    "QuantConfig",
    "QuantRecord",
    "ResidualRecord",
    "absmax_scale",
    "apply_methods",
    "build_mask",
    "clip_residual_activations",
    "collect_input_norms",
    "fake_quantize",
    "find_gamma_outliers",
    "find_massive_activation_layer",
    "gamma_outlier_indices",
    "get_method",
    "is_layernorm",
    "list_methods",
    "magnitude_scores",
    "massive_activation_mask",
    "name_matches",
    "parse_pattern",
    "parse_quant_name",
    "pruned",
    "qmax_for",
    "quantized",
    "register_method",
    "reset_layernorm_gamma_outliers",
    "semi_structured_mask",
    "unstructured_row_mask",
    "wanda_scores",
]
