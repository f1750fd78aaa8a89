"""The mesh's axis sizes: -1 is "the devices the other axis leaves" for either axis
(docs/running.md); ``mesh.model=-1`` was refused as not dividing the devices."""

import jax
import pytest

from mami_jax.runtime import sharding


def _shape(mesh):
    return mesh.shape[sharding.DATA_AXIS], mesh.shape[sharding.MODEL_AXIS]


def test_minus_one_is_what_the_other_axis_leaves_for_either_axis():
    assert len(jax.devices()) == 8
    assert _shape(sharding.make_mesh(-1, 2)) == (4, 2)
    assert _shape(sharding.make_mesh(2, -1)) == (2, 4)
    assert _shape(sharding.make_mesh(8, -1)) == (8, 1)
    assert _shape(sharding.make_mesh(1, -1)) == (1, 8)
    assert _shape(sharding.make_mesh(4, 2)) == (4, 2)


def test_both_minus_one_is_refused_naming_the_keys():
    with pytest.raises(ValueError, match=r"^mesh.data=-1 and mesh.model=-1: at most one of "
                                         r"them can be -1"):
        sharding.make_mesh(-1, -1)


@pytest.mark.parametrize("data, model, key", [(3, -1, "mesh.data=3"), (-1, 3, "mesh.model=3"),
                                              (0, -1, "mesh.data=0"), (-1, 0, "mesh.model=0"),
                                              (-2, 1, "mesh.data=-2")])
def test_a_size_that_does_not_divide_the_devices_is_named(data, model, key):
    with pytest.raises(ValueError, match=rf"^{key} must divide the 8 devices \(or be -1\)$"):
        sharding.make_mesh(data, model)


def test_sizes_that_divide_but_do_not_multiply_to_the_devices_are_refused():
    with pytest.raises(ValueError, match=r"^mesh data=2 x model=2 != 8 devices$"):
        sharding.make_mesh(2, 2)
