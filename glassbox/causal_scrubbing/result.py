"""The result of a causal-scrubbing evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from glassbox.causal_scrubbing.sampling import SamplingPlan


def _std(x: np.ndarray) -> float:
    """Sample standard deviation (ddof=1) over seeds; 0.0 with a single seed."""
    return float(np.std(x, ddof=1)) if x.size > 1 else 0.0


def _fraction(random: np.ndarray, scrubbed: np.ndarray, model: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (random - scrubbed) / (random - model)


@dataclass
class ScrubResult:
    """Scrubbed, unscrubbed and random-baseline expectations of the metric.

    Per seed ``s``: ``scrubbed_per_seed[s]`` is the mean metric over the reference inputs with
    the hypothesis' resampling, ``random_per_seed[s]`` the same tree with every node resampled
    at random (every feature constant; same seed), ``metric_model`` the unscrubbed model.

    ``fraction_recovered = (random - scrubbed) / (random - model)`` on the means over seeds
    (1: the hypothesis explains the metric fully; 0: no better than resampling everything);
    ``fraction_recovered_per_seed`` the same ratio per seed. It is NaN when the random
    baseline equals the model. Standard deviations are over seeds (ddof=1; 0 for one seed).
    """

    hypothesis: str
    metric: str
    seeds: List[int]
    references: np.ndarray  # [N] dataset indices
    metric_model: float
    per_example_model: np.ndarray  # [N]
    per_example_scrubbed: np.ndarray  # [S, N]
    per_example_random: np.ndarray  # [S, N]
    plans: Optional[List[SamplingPlan]] = None
    random_plans: Optional[List[SamplingPlan]] = None
    timings: Dict[str, float] = field(default_factory=dict)  # clean_s, scrub_s, total_s, cpu_s, forward_calls

    # -- per seed --------------------------------------------------------------------------------
    @property
    def scrubbed_per_seed(self) -> np.ndarray:
        return self.per_example_scrubbed.mean(axis=1)

    @property
    def random_per_seed(self) -> np.ndarray:
        return self.per_example_random.mean(axis=1)

    @property
    def fraction_recovered_per_seed(self) -> np.ndarray:
        return _fraction(self.random_per_seed, self.scrubbed_per_seed, self.metric_model)

    # -- summaries -------------------------------------------------------------------------------
    @property
    def metric_scrubbed(self) -> float:
        """Scrubbed expectation, mean over seeds."""
        return float(self.scrubbed_per_seed.mean())

    @property
    def metric_random(self) -> float:
        """Random-baseline expectation, mean over seeds."""
        return float(self.random_per_seed.mean())

    @property
    def scrubbed_std(self) -> float:
        return _std(self.scrubbed_per_seed)

    @property
    def random_std(self) -> float:
        return _std(self.random_per_seed)

    @property
    def fraction_recovered(self) -> float:
        return float(_fraction(np.array(self.metric_random), np.array(self.metric_scrubbed), self.metric_model))

    @property
    def fraction_recovered_std(self) -> float:
        return _std(self.fraction_recovered_per_seed)

    @property
    def n_inputs(self) -> int:
        return int(self.references.shape[0])

    def summary(self) -> Dict[str, float]:
        """The headline numbers as a dict (JSON-friendly)."""
        return {
            "metric_model": self.metric_model,
            "metric_scrubbed": self.metric_scrubbed,
            "scrubbed_std": self.scrubbed_std,
            "metric_random": self.metric_random,
            "random_std": self.random_std,
            "fraction_recovered": self.fraction_recovered,
            "fraction_recovered_std": self.fraction_recovered_std,
            "n_inputs": self.n_inputs,
            "n_seeds": len(self.seeds),
        }

    def __repr__(self) -> str:
        def seeds_text(x: np.ndarray) -> str:
            shown = ", ".join(f"{v:.4f}" for v in x[:8])
            return f"[{shown}{', ...' if x.size > 8 else ''}]"

        S = len(self.seeds)
        lines = [
            f"ScrubResult(metric={self.metric!r}, {self.n_inputs} reference inputs, {S} seed{'s' * (S != 1)})",
            f"  model (unscrubbed)       {self.metric_model:.6g}",
            f"  scrubbed                 {self.metric_scrubbed:.6g} ± {self.scrubbed_std:.3g}   "
            f"per seed {seeds_text(self.scrubbed_per_seed)}",
            f"  random (all resampled)   {self.metric_random:.6g} ± {self.random_std:.3g}",
            f"  fraction recovered       {self.fraction_recovered:.4f} ± {self.fraction_recovered_std:.3g}"
            f"   = (random - scrubbed) / (random - model)",
        ]
        if self.timings:
            t = self.timings
            lines.append(f"  time {t.get('total_s', float('nan')):.3f} s wall, {t.get('cpu_s', float('nan')):.3f} s "
                         f"CPU ({int(t.get('forward_calls', 0))} engine calls)")
        lines.append("  hypothesis:")
        lines.extend("    " + l for l in self.hypothesis.splitlines())
        return "\n".join(lines)
