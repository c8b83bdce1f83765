"""Interpretability tools: activations, linear probes with controls, ablation, patching, saliency,
linear surrogates and weight circuits. Each works on any TransformerLens ``HookedRootModule``."""

from physlens.probes.attribution import (
    PatchingAgreement,
    activation_gradients,
    attribution_patching_all_sites,
    attribution_patching_sweep,
    patching_agreement,
)
from physlens.probes.ablation import AblationResult, Component, ablation_hook, ablation_sweep, model_components, next_step_loss
from physlens.probes.activations import Activations, capture_activations, collect_activations, iter_activations
from physlens.probes.distill import UNARY_FUNCTIONS, FormulaCandidate, SymbolicDistiller, distill, record_io
from physlens.probes.invariants import (
    PolynomialLatentRegression,
    QuantityMatch,
    match_quantities,
    monomial_exponents,
    monomial_name,
    polynomial_features,
)
from physlens.probes.linear_probe import (
    DEFAULT_ALPHAS,
    LinearProbe,
    ProbeResult,
    ProbeStatistics,
    RidgeProbeSweep,
    grouped_folds,
    probe_sweep,
    random_init_copy,
    ridge_solve,
)
from physlens.probes.patching import PatchingResult, patching_grid, patching_pairs, patching_sweep, recovery
from physlens.probes.saliency import InputAttribution, integrated_gradients, off_diagonal_fraction, saliency, saliency_matrix
from physlens.probes.surrogate import LinearSurrogate, SurrogateFidelity
from physlens.probes.weights import HeadCircuits, full_ov_circuit, head_circuits, singular_values
from physlens.probes.mechanisms import (
    MODES,
    handcrafted_mode3_network,
    kink_labels,
    mechanism_labels,
    network_parameters,
    unit_pattern_labels,
    unit_states,
)
from physlens.probes.scan import AlgorithmScan, RocResult, flatten_parameters, roc_auc, scan_features, seed_mode3_score
from physlens.probes.algorithms import AlgorithmComparison, compare_algorithms, fit_ar_candidates
from physlens.probes.context_swap import SwapTestResult, context_swap_test
from physlens.probes.nonlinear import mlp_probe, mlp_probe_r2
from physlens.probes.parity import ParityReport, parity_report, pattern_features, quadratic_features
from physlens.probes.selection import SiteSelection, nested_cv_r2, select_sites, site_features
from physlens.probes.steering import ProbeDirection, SteeringResult, fit_probe_direction, model_fingerprint, steering_sweep

__all__ = [
    "AlgorithmComparison",
    "compare_algorithms",
    "fit_ar_candidates",
    "SwapTestResult",
    "context_swap_test",
    "mlp_probe",
    "mlp_probe_r2",
    "ParityReport",
    "parity_report",
    "pattern_features",
    "quadratic_features",
    "SiteSelection",
    "nested_cv_r2",
    "select_sites",
    "site_features",
    "ProbeDirection",
    "SteeringResult",
    "fit_probe_direction",
    "model_fingerprint",
    "steering_sweep",
    "InputAttribution",
    "PatchingAgreement",
    "activation_gradients",
    "attribution_patching_all_sites",
    "attribution_patching_sweep",
    "integrated_gradients",
    "patching_agreement",
    "UNARY_FUNCTIONS",
    "FormulaCandidate",
    "PolynomialLatentRegression",
    "QuantityMatch",
    "SymbolicDistiller",
    "distill",
    "match_quantities",
    "monomial_exponents",
    "monomial_name",
    "polynomial_features",
    "record_io",
    "MODES",
    "handcrafted_mode3_network",
    "kink_labels",
    "mechanism_labels",
    "network_parameters",
    "unit_pattern_labels",
    "unit_states",
    "AlgorithmScan",
    "RocResult",
    "flatten_parameters",
    "roc_auc",
    "scan_features",
    "seed_mode3_score",
    "DEFAULT_ALPHAS",
    "AblationResult",
    "Activations",
    "Component",
    "HeadCircuits",
    "LinearProbe",
    "LinearSurrogate",
    "PatchingResult",
    "ProbeResult",
    "ProbeStatistics",
    "RidgeProbeSweep",
    "SurrogateFidelity",
    "ablation_hook",
    "ablation_sweep",
    "capture_activations",
    "collect_activations",
    "full_ov_circuit",
    "grouped_folds",
    "head_circuits",
    "iter_activations",
    "model_components",
    "next_step_loss",
    "off_diagonal_fraction",
    "patching_grid",
    "patching_pairs",
    "patching_sweep",
    "probe_sweep",
    "random_init_copy",
    "recovery",
    "ridge_solve",
    "saliency",
    "saliency_matrix",
    "singular_values",
]
