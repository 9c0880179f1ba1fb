"""momentum._workloads: the shipped model shapes load and are consistent."""
import math

import pytest

from momentum._workloads import load_workload, workload_names


def test_names():
    assert {"resnet50", "gpt2-small", "many-small"} <= set(workload_names())


@pytest.mark.parametrize("name", workload_names())
def test_shapes_add_up_to_total(name):
    workload = load_workload(name)
    assert workload["name"] == name
    assert all(isinstance(s, tuple) for s in workload["shapes"])
    assert sum(math.prod(s) for s in workload["shapes"]) == workload["total_elements"]


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown workload 'vgg'; known: gpt2-small"):
        load_workload("vgg")
