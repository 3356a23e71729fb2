"""The capacity arithmetic behind docs/scaling.md (benchmarks/scale_out.py)."""

from __future__ import annotations

import pytest

from benchmarks.scale_out import cores_needed, cpu_cores, images_per_s_per_replica, manifests, replicas_needed


def test_cores_needed_is_rate_times_cost() -> None:
    assert cores_needed(100, 28) == pytest.approx(2.8)
    assert cores_needed(0, 28) == 0


def test_capacity_per_replica() -> None:
    # 2 cores at 70 % with 28 ms per image: 1.4 core-seconds per second / 0.028 s = 50 images/s
    assert images_per_s_per_replica(28, 2, 0.7) == pytest.approx(50)


@pytest.mark.parametrize(
    ("rate", "cost_ms", "cores", "utilisation", "expected"),
    [
        (100, 28, 2, 0.5, 3),  # 2.8 cores / 1.0
        (100, 28, 2, 0.7, 2),  # 2.8 / 1.4 = 2.0 exactly: not 3 from float error
        (100, 41, 2, 0.7, 3),  # 4.1 / 1.4 = 2.93
        (100, 22, 0.5, 0.7, 7),  # the facade HPA: 2.2 cores / 0.35 per pod = 6.3
        (1, 1, 2, 0.7, 1),  # never fewer than one replica
        (0, 28, 2, 0.7, 1),
    ],
)
def test_replicas_needed(rate: float, cost_ms: float, cores: float, utilisation: float, expected: int) -> None:
    assert replicas_needed(rate, cost_ms, cores, utilisation) == expected


def test_cpu_quantities() -> None:
    assert cpu_cores("500m") == 0.5
    assert cpu_cores("2") == 2
    assert cpu_cores(1.5) == 1.5


def test_manifest_numbers_are_read() -> None:
    found = manifests()
    assert cpu_cores(found["facade"]["requests"]["cpu"]) > 0
    assert 0 < found["hpa"]["target"] <= 1
    assert found["hpa"]["min"] <= found["hpa"]["max"]
    assert found["cluster"]["ovms_replicas"] >= found["ovms_replicas"]
