"""Offline tests of the Helm chart: every scenario is rendered once per session (chart_tools)."""

from chart_tools import crds_dir, rendered, rendered_dir  # noqa: F401 - session fixtures
