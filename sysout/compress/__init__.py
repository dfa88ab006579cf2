"""Compression library: fake quantization, pruning and outlier-mitigation probes.

Every transformation is a context manager that edits a model in place and restores it exactly
on exit; :mod:`sysout.compress.methods` names them for the robustness tables of SPEC section 5.
They act on the projection layers the model's adapter names (``nn.Linear`` and Hugging Face's
``Conv1D`` alike, through their ``[out, in]`` weight view), leave the LM head out, and take their
outlier thresholds from :class:`sysout.outliers.rules.OutlierThresholds`. ``w8a8_static``
(:mod:`sysout.compress.static_int8`) also quantizes norms, embeddings, attention internals and
the residual stream, through the same adapter.
"""

from .layers import Targets, WeightSnapshot, name_matches, select_targets
from .massive import (
    MassiveCalibration,
    MassiveRecord,
    calibrate_massive_activations,
    find_massive_activation_layer,
    replace_massive_activations,
)
from .methods import (
    KINDS,
    METHODS,
    BaselineRecord,
    Method,
    apply_methods,
    get_method,
    list_methods,
    register_method,
)
from .mitigate import GammaResetRecord, find_gamma_outliers, norm_gammas, reset_gamma_outliers
from .prune import (
    PruneRecord,
    build_mask,
    collect_input_norms,
    magnitude_scores,
    matrix_mask,
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
    parse_quant_name,
    qmax_for,
    quantized,
)
from .static_int8 import StaticInt8Config, StaticInt8Record, static_int8
from .static_ops import ActQuantizer, mse_weight_range, percentiles
from .static_quant import (
    StaticQuantConfig,
    StaticQuantRecord,
    asymmetric_params,
    calibrate_ranges,
    fake_quantize_asymmetric,
    percentile_range,
    static_quantized,
)

__all__ = [
    "ActQuantizer",
    "StaticInt8Config",
    "StaticInt8Record",
    "mse_weight_range",
    "percentiles",
    "static_int8",
    "KINDS",
    "METHODS",
    "BaselineRecord",
    "GammaResetRecord",
    "MassiveCalibration",
    "MassiveRecord",
    "Method",
    "PruneRecord",
    "QuantConfig",
    "QuantRecord",
    "StaticQuantConfig",
    "StaticQuantRecord",
    "Targets",
    "WeightSnapshot",
    "absmax_scale",
    "apply_methods",
    "asymmetric_params",
    "build_mask",
    "calibrate_massive_activations",
    "calibrate_ranges",
    "collect_input_norms",
    "fake_quantize",
    "fake_quantize_asymmetric",
    "find_gamma_outliers",
    "find_massive_activation_layer",
    "get_method",
    "list_methods",
    "magnitude_scores",
    "matrix_mask",
    "name_matches",
    "norm_gammas",
    "parse_pattern",
    "parse_quant_name",
    "percentile_range",
    "pruned",
    "qmax_for",
    "quantized",
    "register_method",
    "replace_massive_activations",
    "reset_gamma_outliers",
    "select_targets",
    "semi_structured_mask",
    "static_quantized",
    "unstructured_row_mask",
    "wanda_scores",
]
