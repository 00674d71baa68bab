"""jaxgen: continuous-time generative models in JAX, as pure functions.

Modules: ``processes`` (VP / sub-VP / VE SDEs, the linear and EDM paths), ``predictions``
(score / eps / x0 / velocity conversions), ``solvers`` (reverse-SDE, DDPM, DDIM, EDM and
probability-flow ODE samplers), ``likelihood`` (PF-ODE log-likelihood and bits/dim), ``cnf``
(FFJORD / RNODE), ``rectified_flow`` (reflow and distillation), ``closed_form`` (exact Gaussian
and mixture scores and densities), ``losses``, ``augment`` (EDM's non-leaky augmentation),
``models`` (Flax networks), ``data``, ``train``,
``evaluate``, ``parallel`` and ``main`` (the command line). Submodules are imported explicitly
(``from jaxgen import solvers``), so that ``import jaxgen`` itself stays cheap.
"""
