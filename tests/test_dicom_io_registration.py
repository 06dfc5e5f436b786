"""dicom_io.registration: rigid co-registration of DCE phases, checked on the liver phantom's known motion."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_io.registration import (
    RegistrationError,
    RegistrationSettings,
    overlap_fraction,
    register_phases,
    register_rigid,
)
from dicom_io.volume import Volume
from inference.liver.phantom import DCE_PHASES, simulate_liver_mr

FRAME = "1.2.826.0.1.3680043.8.498.1"


@pytest.fixture(scope="module")
def phantom():  # type: ignore[no-untyped-def]
    return simulate_liver_mr(21, shape=(32, 96, 104), spacing=(4.0, 3.0, 3.0), motion_mm=6.0, n_lesions=2)


def _volume(array: np.ndarray, spacing, origin=(0.0, 0.0, 0.0), frame: str = FRAME) -> Volume:  # type: ignore[no-untyped-def]
    return Volume(array=np.asarray(array, np.float32), spacing=spacing, origin=origin, direction=np.eye(3),
                  frame_of_reference_uid=frame)


def _phases(phantom) -> dict[str, Volume]:  # type: ignore[no-untyped-def]
    return {name: _volume(phantom.images[k], phantom.spacing) for k, name in enumerate(phantom.channels)}


def test_known_phase_motion_is_recovered_within_half_a_voxel(phantom):
    reference = phantom.channels.index("portal")
    truth = phantom.motion_mm - phantom.motion_mm[reference]
    assert np.abs(truth).max() > 3.0, "the phantom should move between phases for this test to mean anything"
    volumes = _phases(phantom)
    for k, name in enumerate(phantom.channels):
        if name == "portal":
            continue
        result = register_rigid(volumes[name], volumes["portal"], name=f"{name} phase")
        error = np.abs(np.array(result.shift_zyx_mm) - truth[k])
        assert np.all(error <= 0.5 * np.array(phantom.spacing)), (name, result.shift_zyx_mm, truth[k])
        assert result.mutual_information > result.mutual_information_before
        assert result.array.shape == volumes["portal"].shape and result.overlap > 0.8
        # Where the moved phase does not reach, its edge is held, not blacked out (a model would read a
        # black end slice as anatomy).
        for end in (0, -1):
            assert result.array[end].mean() > 0.8 * volumes[name].array[end].mean(), (name, end)


def test_registration_brings_the_liver_back_onto_the_reference(phantom):
    """After alignment the arterial phase's liver lies where the portal phase's does (truth labels are on the
    portal grid), so its signal inside the liver varies less than before."""
    volumes = _phases(phantom)
    stacked = register_phases(volumes, "portal")
    assert stacked.names == tuple(phantom.channels) and stacked.array.shape == (len(DCE_PHASES), *phantom.labels.shape)
    liver = phantom.labels > 0
    edge = liver ^ np.roll(liver, 2, axis=2)  # a band at the liver's left/right edges
    k = phantom.channels.index("delayed")
    before = np.corrcoef(phantom.images[k][edge], liver[edge])[0, 1]
    after = np.corrcoef(stacked.array[k][edge], liver[edge])[0, 1]
    assert after > before + 0.05, (before, after)


def test_euler_registration_also_recovers_the_shift(phantom):
    volumes = _phases(phantom)
    k = phantom.channels.index("arterial")
    truth = phantom.motion_mm[k] - phantom.motion_mm[phantom.channels.index("portal")]
    result = register_rigid(volumes["arterial"], volumes["portal"], RegistrationSettings(transform="euler"))
    assert np.all(np.abs(np.array(result.shift_zyx_mm) - truth) <= np.array(phantom.spacing))
    assert result.rotation_deg < 2.0


def test_volumes_that_do_not_overlap_are_refused(phantom):
    portal = _volume(phantom.images[phantom.channels.index("portal")], phantom.spacing)
    elsewhere = _volume(phantom.images[0], phantom.spacing, origin=(0.0, 0.0, 900.0), frame="1.2.3.4")
    assert overlap_fraction(elsewhere, portal) == 0.0
    with pytest.raises(RegistrationError, match="different frames of reference .* do not overlap"):
        register_rigid(elsewhere, portal, name="pre phase")


def test_a_shift_beyond_the_maximum_is_refused(phantom):
    volumes = _phases(phantom)
    k = phantom.channels.index("arterial")
    moved = float(np.linalg.norm(phantom.motion_mm[k] - phantom.motion_mm[phantom.channels.index("portal")]))
    limit = round(moved / 2, 1)
    with pytest.raises(RegistrationError, match=f"more than max_shift_mm = {limit:g} mm"):
        register_rigid(volumes["arterial"], volumes["portal"], RegistrationSettings(max_shift_mm=limit),
                       name="arterial phase")


def test_images_of_nothing_alike_are_refused_for_poor_mutual_information(phantom):
    portal = _volume(phantom.images[phantom.channels.index("portal")], phantom.spacing)
    noise = _volume(np.random.default_rng(0).normal(100, 20, portal.shape), phantom.spacing)
    with pytest.raises(RegistrationError, match="mutual information"):
        register_rigid(noise, portal, name="arterial phase")
