"""Paddock's Ray Serve application builder.

``import_path: service.serve.builder:app_builder`` in a Ray Serve config file
(``serve deploy``, a KubeRay RayService) with the Paddock service config as
``args``; ``paddock serve`` calls :func:`build_app` with the same config.
Either way :func:`build_app` applies the ``PADDOCK_*`` overrides (``PADDOCK_PORT`` …)
of the process that builds the app: the Ray node's environment for ``serve deploy``
and the chart's RayService, the CLI's settings for ``paddock serve``.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from ray.serve import Application

from service.config.loader import apply_settings, parse_config
from service.config.schema import ModelConfig, ServiceConfig
from service.config.settings import Settings
from service.serve.deployments import Ingress, ModelServer, Registry
from service.serve.placement import replica_placement

POLICY = "service.serve.autoscaling:inflight_policy"


def deployment_name(model: ModelConfig) -> str:
    return "model-" + re.sub(r"[^A-Za-z0-9_-]", "_", model.id)


def autoscaling_options(model: ModelConfig) -> dict[str, Any]:
    """Fixed replicas when min == max, otherwise Ray Serve autoscaling on in-flight requests."""
    scaling = model.autoscaling
    if scaling.min_replicas == scaling.max_replicas:
        return {"num_replicas": scaling.min_replicas}
    config: dict[str, Any] = {
        "min_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
        "downscale_to_zero_delay_s": scaling.scale_to_zero_delay_s,
        "metrics_interval_s": 1.0,
        "look_back_period_s": 5.0,
        "policy": {"policy_function": POLICY},
    }
    if scaling.initial_replicas is not None:
        config["initial_replicas"] = scaling.initial_replicas
    return {"autoscaling_config": config}


def model_options(model: ModelConfig, drain_timeout_s: float) -> dict[str, Any]:
    """The model's deployment options; its Ray resources and placement group come from ``placement.py``."""
    return {
        "name": deployment_name(model),
        **replica_placement(model.resources).options(),
        # Requests do not pass through Ray; only wake-ups from zero do.
        "max_ongoing_requests": 10_000,
        "health_check_period_s": 5,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": drain_timeout_s + 15,
        **autoscaling_options(model),
    }


def build_app(config: ServiceConfig, settings: Settings | None = None) -> Application:
    """The Serve application: a registry, one deployment per model, and the ingress.

    ``settings`` default to this process's environment; their overrides are applied to ``config``
    (again, if the caller already did: that changes nothing).
    """
    settings = settings or Settings()
    config = apply_settings(config, settings)
    token = settings.internal_token or secrets.token_urlsafe(32)
    ingress = config.ingress
    # @serve.deployment made these classes Deployments (mypy does not follow class decorators).
    registry = Registry.bind()  # type: ignore[attr-defined]
    approval = config.approval.model_dump(mode="json")
    models = {
        model.id: ModelServer.options(**model_options(model, ingress.drain_timeout_s)).bind(  # type: ignore[attr-defined]
            model.model_dump(mode="json"),
            token,
            registry,
            int(ingress.max_body_bytes),
            approval,
            ingress.drain_timeout_s,
        )
        for model in config.models
    }
    return Ingress.options(  # type: ignore[attr-defined]
        num_replicas=ingress.replicas,
        ray_actor_options={"num_cpus": ingress.cpus},
        max_ongoing_requests=10_000,
        health_check_period_s=5,
        graceful_shutdown_timeout_s=ingress.drain_timeout_s + 5,
        **({"max_replicas_per_node": ingress.max_replicas_per_node} if ingress.max_replicas_per_node else {}),
    ).bind(config.model_dump(mode="json"), token, registry, models)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for Ray Serve config files: ``args`` is the Paddock service config.

    Settings come from the environment of the Ray process that builds the app (container env,
    or the application's ``runtime_env.env_vars``), read here, when Ray calls the builder.
    """
    return build_app(parse_config(args, "Ray Serve application args"), Settings())
