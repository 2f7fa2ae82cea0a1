"""Robustness evaluation: named attacks, offline regeneration attacks, the `guard eval` harness, metrics,
plots and the spoofing experiment (DESIGN §10).

    >>> from guard.eval import EvalConfig, run_eval
    >>> summary = run_eval(EvalConfig(out=Path("eval-soft"), n=1000, mode="soft"))     # doctest: +SKIP

Modules: `attacks` (pixel attacks + registry), `regeneration` (second VQ, AR resampling, autoencoder),
`autoencoder` (the shipped attack autoencoder and its trainer), `metrics`, `harness`, `plots`, `spoof`.
"""

from . import regeneration  # noqa: F401  (registers the regeneration attacks)
from .attacks import ATTACKS, AttackContext, apply_attack, parse_attack_list
from .harness import EvalConfig, run_eval, summarize

__all__ = ["ATTACKS", "AttackContext", "apply_attack", "parse_attack_list", "EvalConfig", "run_eval", "summarize"]
