"""The trial config: every knob of one trial (``knobs``), parsed and checked up front (``checks``) into a
``TrialConfig``, with its method's defaults filled in."""

from __future__ import annotations

import dataclasses

from byol_bench.config.checks import memory_bank_too_large, validate
from byol_bench.config.knobs import (COMPILE_MIN_STEPS, KEYS, KNOBS, LR_REFERENCE_BATCH, OPTION_KNOBS, TrialConfig,
                                     folded, is_key, knob, knob_types, knob_value, listed, method_reads, option_columns,
                                     parse_options, read_yaml)
from byol_bench.errors import UserError, did_you_mean

__all__ = ["COMPILE_MIN_STEPS", "KEYS", "KNOBS", "LR_REFERENCE_BATCH", "OPTION_KNOBS", "TrialConfig", "folded", "is_key",
           "knob", "knob_types", "listed", "make_config", "memory_bank_too_large", "method_reads", "option_columns",
           "parse_options", "read_yaml", "resolved_config", "validate", "with_method_defaults"]


def make_config(values: dict) -> TrialConfig:
    """Build a validated TrialConfig from a mapping of knobs (from YAML, the CLI or a sweep)."""
    for key in values:
        if not is_key(key):
            raise UserError(f"unknown key '{key}'{did_you_mean(key, KEYS)}; valid keys: {', '.join(KEYS)}")
    values = folded(values)
    cfg = TrialConfig(**{key: knob_value(key, value) for key, value in {**_trains_with(values), **values}.items()})
    cfg = with_method_defaults(cfg)
    validate(cfg)
    return cfg


def _trains_with(values: dict) -> dict:
    """The optimizer knobs that the trial's method trains with unless ``values`` give them (its ``trains_with``)."""
    from byol_bench.models.methods import METHODS

    method = values.get("method", TrialConfig.method)
    return getattr(METHODS[method], "trains_with", {}) if isinstance(method, str) and method in METHODS else {}


def with_method_defaults(cfg: TrialConfig) -> TrialConfig:
    """``cfg`` with every method-specific knob its method reads and that was left empty set to the method's default."""
    from byol_bench.models.methods import METHODS

    from byol_bench.models.method import method_options

    if cfg.method not in METHODS:
        return cfg
    defaults = METHODS[cfg.method].config_keys
    declared = method_options(METHODS[cfg.method])
    options = {**declared, **{name: float(value) if isinstance(declared.get(name), float) and type(value) is int else value
                              for name, value in (cfg.method_options or {}).items()}}  # 4 for a float option is 4.0
    return dataclasses.replace(cfg, **{key: value for key, value in defaults.items() if getattr(cfg, key) is None},
                               method_options=options or None)


def resolved_config(knobs: dict) -> dict:
    """Every knob a trial with ``knobs`` runs with: the defaults under its knobs, and the knobs its method
    never reads left empty (None) rather than a default that was never used. The sweep records this for
    every trial, and the report for a planned trial that has no row (or a trial JSON, whose config may
    come from a version that recorded every knob)."""
    method = knobs.get("method", TrialConfig.method)
    return make_config({key: value for key, value in knobs.items() if method_reads(method, key)}).to_dict()
