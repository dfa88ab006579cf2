"""Attention variants: one registry, one class per formulation (see SPEC section 3).

Adding a variant: write a small :class:`AttentionVariant` subclass decorated with
``@register_variant`` in ``variants.py`` (or any module imported here), declaring its
``traits = VariantTraits(...)``, and a YAML file in ``conf/attention/`` naming it. Who needs to
know what a variant is asks :func:`variants_with` or ``get_variant_class(name).traits``.
"""

from typing import Any

from sysout.attention import variants as _variants  # noqa: F401  (registers the variants)
from sysout.attention.base import (
    IMPLEMENTATIONS,
    SELF_CHECK_MODES,
    TRAIT_NAMES,
    AttentionVariant,
    VariantTraits,
    causal_mask,
    causal_scores,
    get_variant_class,
    register_variant,
    set_kernel_self_check,
    variant_names,
    variants_with,
)


def build_variant(
    name: str, n_head: int, n_embd: int, impl: str = "auto", **options: Any
) -> AttentionVariant:
    """Construct a registered variant; unknown names and options fail with the valid choices."""
    cls = get_variant_class(name)
    try:
        return cls(n_head, n_embd, impl=impl, **options)
    except TypeError as err:
        raise ValueError(f"attention variant {name!r} rejected options {options}: {err}") from None


__all__ = [
    "IMPLEMENTATIONS",
    "SELF_CHECK_MODES",
    "TRAIT_NAMES",
    "AttentionVariant",
    "VariantTraits",
    "build_variant",
    "causal_mask",
    "causal_scores",
    "get_variant_class",
    "register_variant",
    "set_kernel_self_check",
    "variant_names",
    "variants_with",
]
