"""Local Ray start-up: the Ray Serve tuning defaults and the logical CPU count."""

from __future__ import annotations

import inspect

import ray.serve._private.constants as ray_serve_constants

from service.serve.local import RAY_TUNING, apply_ray_tuning


def test_tuning_fills_only_what_the_environment_leaves_unset() -> None:
    environ = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1", "OTHER": "x"}
    apply_ray_tuning(environ)
    assert environ["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.1"  # the operator's value wins
    assert environ["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] == "1000"
    assert environ["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert environ["OTHER"] == "x"


def test_tuning_names_are_variables_this_ray_reads() -> None:
    """A Ray upgrade that renames one would silently drop the tuning: fail here instead."""
    source = inspect.getsource(ray_serve_constants)
    for name in RAY_TUNING:
        assert f'"{name}"' in source, name
