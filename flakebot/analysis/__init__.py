"""The statistics of flakebot: pure, deterministic given a seed.

- classes:   run -> outcome class (worst-wait bins, timeout, fail; infra excluded)
- posterior: exact culprit posterior (mixture-of-Dirichlet sides, rates integrated out)
- planner:   where to run next (expected information per host-minute)
- rates:     before/after rates with credible intervals
- engine:    `step`, the one facade the campaign loop calls
"""
from flakebot.analysis.classes import DEFAULT_BINS, Bins, class_names, classify, to_groups
from flakebot.analysis.engine import EngineSettings, Step, step
from flakebot.analysis.posterior import (Posterior, Prior, default_prior, known_rates_prior, path_weights,
                                         posterior, prior_from_evidence)
from flakebot.analysis.planner import host_build_sets, information, plan, plan_hosts
from flakebot.analysis.rates import Rates, beta_rate, culprit_rates

__all__ = ["Bins", "DEFAULT_BINS", "classify", "class_names", "to_groups", "EngineSettings", "Step", "step",
           "Posterior", "Prior", "default_prior", "known_rates_prior", "path_weights", "posterior",
           "prior_from_evidence", "information", "plan", "plan_hosts", "host_build_sets", "Rates", "beta_rate", "culprit_rates"]
