"""Samplers: reverse-SDE predictor-corrector (:mod:`.sde`) and ODE / DDIM / EDM-Heun (:mod:`.ode`).

Every sampler is a pure function of an explicit PRNG key returning ``(samples, nfe)``, ``nfe`` the
number of network evaluations per sample trajectory. The name tables below list the accepted
string arguments.
"""
from jaxgen.solvers.ode import (ADAPTIVE_SOLVERS, FIXED_STEP_SOLVERS, SCHEDULES, SOLVERS,
                                ddim_sample, edm_heun_sample, edm_time_schedule, heun_sample,
                                time_grid, ode_sample, solve_ode)
from jaxgen.solvers.sde import (CORRECTORS, PREDICTORS, ancestral_step, check_pc_options,
                                euler_maruyama_sample, euler_maruyama_step, has_discretize,
                                langevin_step, pc_sample, reverse_diffusion_step)

__all__ = [
    "ADAPTIVE_SOLVERS", "CORRECTORS", "FIXED_STEP_SOLVERS", "PREDICTORS", "SCHEDULES", "SOLVERS",
    "ancestral_step", "check_pc_options", "ddim_sample", "edm_heun_sample", "edm_time_schedule",
    "euler_maruyama_sample", "euler_maruyama_step", "has_discretize", "heun_sample",
    "time_grid", "langevin_step", "ode_sample", "pc_sample", "reverse_diffusion_step",
    "solve_ode",
]
