"""Test and benchmark support shared by ``tests/`` and ``bench/``.

Free loopback ports, stopping the processes a test or benchmark started, a stand-in
replica for the ingress, and a real Prometheus server. ``service`` never imports this
package and it is not shipped in the wheel (pyproject's setuptools find includes only
``service*``).
"""
